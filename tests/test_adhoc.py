"""XEP-0050 ad-hoc commands and the XEP-0401 invite commands, against the real server with
slixmpp's xep_0050 plugin; the invites they make are checked in the server's database."""

from __future__ import annotations

import subprocess
from contextlib import asynccontextmanager
import time
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
from slixmpp.exceptions import IqError

from appliance.features.adhoc import MAX_SESSIONS, CommandError, Commands
from appliance.features.admins import _configured
from appliance.net.certs import ensure_certificate, fingerprint_sha256
from appliance.pairing import fingerprint
from appliance.pairing.invites import ACCOUNT, CONTACT, Invite, ParsedUri, normalise_fingerprint, parse_uri
from appliance.proto import ns
from appliance.proto.jid import JID
from appliance.store.db import Database
from appliance.store.invites import get_invite, set_admin
from tests.harness import ServerProcess, free_port
from tests.slix import Client, run

PLUGINS = ("xep_0030", "xep_0004", "xep_0050")
INVITE, CREATE_ACCOUNT = "urn:xmpp:invite#invite", "urn:xmpp:invite#create-account"
EXPIRY_DAYS = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Web pages on, `boss` an administrator by configuration, `carol` one by the database flag."""
    proc = ServerProcess(tmp_path_factory.mktemp("adhoc"), settings={
        "admins": ["boss"], "invites.expiry_days": EXPIRY_DAYS,
        "http.enabled": True, "http.port": free_port(), "http.tls_port": 0,
        "http.public_url": "http://box.example:8080"}).start()
    for name in ("alice", "boss", "carol"):
        proc.add_user(name)
    with database(proc) as db:
        db.write_sync(set_admin, "carol")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Web pages off (the harness default); users may not invite contacts but may create accounts."""
    proc = ServerProcess(tmp_path_factory.mktemp("adhoc-open"), settings={
        "invites.users_may_invite": False, "invites.users_may_create_accounts": True}).start()
    proc.add_user("alice")
    yield proc
    proc.stop()


class database:
    """The server's database, opened beside it (WAL), closed after use."""

    def __init__(self, server: ServerProcess) -> None:
        self.db = Database.open(server.data / "appliance.sqlite3")

    def __enter__(self) -> Database:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


def stored(server: ServerProcess, token: str | None) -> Invite:
    assert token is not None
    with database(server) as db:
        invite = db.read(get_invite, token)
    assert invite is not None, "the token in the URI names no invite in the database"
    return invite


@asynccontextmanager
async def logged_in(server: ServerProcess, name: str) -> AsyncIterator[Client]:
    client = Client(server, f"{name}@{server.domain}", plugins=PLUGINS)
    await client.login(send_presence=False, get_roster=False)
    try:
        yield client
    finally:
        await client.logout()


async def command_nodes(server: ServerProcess, name: str) -> set[str]:
    async with logged_in(server, name) as client:
        result = await client.plugin["xep_0050"].get_commands(jid=server.domain)
        items = result["disco_items"]["items"]
        assert all(jid == server.domain for jid, _, _ in items)
        return {node for _, node, _ in items}


def submit_form(client: Client, **values: str) -> Any:
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    for var, value in values.items():
        form.add_field(var=var, value=value)
    return form


async def execute(client: Client, domain: str, node: str, **kwargs: Any) -> Any:
    return await client.plugin["xep_0050"].send_command(domain, node, **kwargs)


async def error_of(client: Client, domain: str, node: str, **kwargs: Any) -> tuple[str, str | None]:
    """The stanza error condition and the XEP-0050 specific condition (or None) of a command request."""
    with pytest.raises(IqError) as caught:
        await execute(client, domain, node, **kwargs)
    error = caught.value.iq.xml.find("{jabber:client}error")
    specific = [child.tag.split("}")[1] for child in error if child.tag.startswith(f"{{{ns.COMMANDS}}}")]
    return caught.value.iq["error"]["condition"], (specific[0] if specific else None)


def result_values(answer: Any) -> dict[str, Any]:
    assert answer["command"]["status"] == "completed"
    form = answer["command"]["form"]
    assert form["type"] == "result"
    return form.get_values()


def fields_of(answer: Any) -> list[str]:
    return [var for var in answer["command"]["form"].get_fields()]


# ---- listing and describing commands ----------------------------------------------------------


def test_a_user_sees_the_invite_command_and_admins_see_both(server: ServerProcess) -> None:
    assert run(command_nodes(server, "alice")) == {INVITE}
    assert run(command_nodes(server, "boss")) == {INVITE, CREATE_ACCOUNT}   # admin by configuration
    assert run(command_nodes(server, "carol")) == {INVITE, CREATE_ACCOUNT}  # admin by the database flag


def test_the_configuration_decides_who_sees_what(open_server: ServerProcess) -> None:
    assert run(command_nodes(open_server, "alice")) == {CREATE_ACCOUNT}


def test_the_server_advertises_commands_and_describes_each(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with logged_in(server, "alice") as client:
            disco = client.plugin["xep_0030"]
            assert ns.COMMANDS in (await disco.get_info(jid=server.domain))["disco_info"]["features"]
            info = (await disco.get_info(jid=server.domain, node=INVITE))["disco_info"]
            assert [(c, t) for c, t, _, _ in info["identities"]] == [("automation", "command-node")]
            assert {ns.COMMANDS, ns.DATA_FORMS} <= set(info["features"])
            listing = (await disco.get_info(jid=server.domain, node=ns.COMMANDS))["disco_info"]
            assert [(c, t) for c, t, _, _ in listing["identities"]] == [("automation", "command-list")]
            with pytest.raises(IqError) as caught:
                await disco.get_info(jid=server.domain, node=CREATE_ACCOUNT)
            assert caught.value.iq["error"]["condition"] == "forbidden"
    run(scenario())


# ---- urn:xmpp:invite#invite ---------------------------------------------------------------------


def test_a_user_invites_a_contact(server: ServerProcess) -> None:
    async def scenario() -> dict[str, Any]:
        async with logged_in(server, "alice") as client:
            return result_values(await execute(client, server.domain, INVITE))
    before = time.time()
    values = run(scenario())
    uri = parse_uri(values["uri"])
    assert (uri.action, uri.jid, uri.params.get("ibr")) == ("roster", f"alice@{server.domain}", "y")
    assert uri.fingerprint == normalise_fingerprint(fingerprint_sha256(server.cert))
    invite = stored(server, uri.token)
    assert (invite.kind, invite.inviter, invite.username, invite.admin) == (CONTACT, "alice", None, False)
    assert values["landing-url"] == f"http://box.example:8080/invite/{uri.token}"
    expire = datetime.strptime(values["expire"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert invite.expires is not None and abs(expire - invite.expires) < 1
    assert before + EXPIRY_DAYS * 86400 - 5 < expire < time.time() + EXPIRY_DAYS * 86400 + 5


def test_without_web_pages_there_is_no_landing_url(open_server: ServerProcess) -> None:
    async def scenario() -> tuple[Any, Any]:
        async with logged_in(open_server, "alice") as client:
            refused = await error_of(client, open_server.domain, INVITE)
            first = await execute(client, open_server.domain, CREATE_ACCOUNT)
            done = await execute(client, open_server.domain, CREATE_ACCOUNT, action="complete",
                                 sessionid=first["command"]["sessionid"], payload=submit_form(client))
            return refused, done
    refused, done = run(scenario())
    assert refused == ("forbidden", None)       # invites.users_may_invite = false
    values = result_values(done)
    assert "landing-url" not in values and "landing-url" not in fields_of(done)
    assert parse_uri(values["uri"]).action == "register"
    assert stored(open_server, parse_uri(values["uri"]).token).inviter is None


# ---- urn:xmpp:invite#create-account -------------------------------------------------------------


def test_a_user_may_not_create_accounts(server: ServerProcess) -> None:
    async def scenario() -> tuple[str, str | None]:
        async with logged_in(server, "alice") as client:
            return await error_of(client, server.domain, CREATE_ACCOUNT)
    assert run(scenario()) == ("forbidden", None)


async def create_account(server: ServerProcess, requester: str, **values: str) -> tuple[Any, Any]:
    """Run create-account as `requester`: the form the server asks with, then the completed answer."""
    async with logged_in(server, requester) as client:
        first = await execute(client, server.domain, CREATE_ACCOUNT)
        done = await execute(client, server.domain, CREATE_ACCOUNT, action="complete",
                             sessionid=first["command"]["sessionid"], payload=submit_form(client, **values))
        return first, done


def test_an_admin_creates_an_account_invite(server: ServerProcess) -> None:
    first, done = run(create_account(server, "boss"))
    assert first["command"]["status"] == "executing" and first["command"]["sessionid"]
    assert first["command"]["actions"] == {"complete"}
    assert first["command"]["form"]["type"] == "form"
    assert fields_of(first) == ["username", "roster-subscription", "admin"]
    assert done["command"]["sessionid"] == first["command"]["sessionid"]
    uri = parse_uri(result_values(done)["uri"])
    assert (uri.action, uri.jid) == ("register", server.domain)
    assert uri.fingerprint == normalise_fingerprint(fingerprint_sha256(server.cert))
    invite = stored(server, uri.token)
    assert (invite.kind, invite.inviter, invite.username, invite.admin) == (ACCOUNT, None, None, False)


def test_a_preset_username_an_admin_flag_and_a_subscription(server: ServerProcess) -> None:
    _, done = run(create_account(server, "carol", username="NewBie", admin="true", **{"roster-subscription": "1"}))
    uri: ParsedUri = parse_uri(result_values(done)["uri"])
    assert (uri.action, uri.jid) == ("register", f"newbie@{server.domain}")
    invite = stored(server, uri.token)
    assert (invite.kind, invite.inviter, invite.username, invite.admin) == (ACCOUNT, "carol", "newbie", True)


def test_a_user_allowed_to_create_accounts_cannot_make_admins(open_server: ServerProcess) -> None:
    async def scenario() -> tuple[Any, tuple[str, str | None]]:
        async with logged_in(open_server, "alice") as client:
            first = await execute(client, open_server.domain, CREATE_ACCOUNT)
            refused = await error_of(client, open_server.domain, CREATE_ACCOUNT, action="complete",
                                     sessionid=first["command"]["sessionid"],
                                     payload=submit_form(client, admin="1"))
            return first, refused
    first, refused = run(scenario())
    assert fields_of(first) == ["username", "roster-subscription"]   # no admin field offered
    assert refused == ("forbidden", None)


@pytest.mark.parametrize("username, expected", [
    ("a@b", ("bad-request", "bad-payload")),      # not a localpart
    ("Alice", ("conflict", None)),                # exists already (names compare as logins do)
])
def test_a_preset_username_must_be_free_and_valid(server: ServerProcess, username: str,
                                                  expected: tuple[str, str | None]) -> None:
    async def scenario() -> tuple[str, str | None]:
        async with logged_in(server, "boss") as client:
            first = await execute(client, server.domain, CREATE_ACCOUNT)
            return await error_of(client, server.domain, CREATE_ACCOUNT, action="complete",
                                  sessionid=first["command"]["sessionid"],
                                  payload=submit_form(client, username=username))
    assert run(scenario()) == expected


# ---- the XEP-0050 errors and sessions -----------------------------------------------------------


def test_bad_requests_get_the_xep_0050_errors(server: ServerProcess) -> None:
    async def scenario() -> dict[str, Any]:
        domain = server.domain
        async with logged_in(server, "boss") as boss, logged_in(server, "carol") as carol:
            session = (await execute(boss, domain, CREATE_ACCOUNT))["command"]["sessionid"]
            found = {
                "unknown node": await error_of(boss, domain, "urn:example:nothing"),
                "no session, action next": await error_of(boss, domain, INVITE, action="next"),
                "unknown action": await error_of(boss, domain, INVITE, action="jump"),
                "unknown session": await error_of(boss, domain, CREATE_ACCOUNT, action="complete",
                                                  sessionid="nope", payload=submit_form(boss)),
                "someone else's session": await error_of(carol, domain, CREATE_ACCOUNT, action="complete",
                                                         sessionid=session, payload=submit_form(carol)),
                "session of another command": await error_of(boss, domain, INVITE, action="complete",
                                                             sessionid=session),
                "one stage only": await error_of(boss, domain, CREATE_ACCOUNT, action="next", sessionid=session),
                "no form": await error_of(boss, domain, CREATE_ACCOUNT, action="complete", sessionid=session),
            }
            found["completed session again"] = await error_of(boss, domain, CREATE_ACCOUNT, action="complete",
                                                              sessionid=session, payload=submit_form(boss))
            return found
    assert run(scenario()) == {
        "unknown node": ("item-not-found", None),
        "no session, action next": ("bad-request", "bad-action"),
        "unknown action": ("bad-request", "malformed-action"),
        "unknown session": ("bad-request", "bad-sessionid"),
        "someone else's session": ("bad-request", "bad-sessionid"),
        "session of another command": ("bad-request", "bad-sessionid"),
        "one stage only": ("bad-request", "bad-action"),
        "no form": ("bad-request", "bad-payload"),
        "completed session again": ("bad-request", "bad-sessionid"),
    }


def test_a_canceled_session_is_over(server: ServerProcess) -> None:
    async def scenario() -> tuple[Any, tuple[str, str | None]]:
        async with logged_in(server, "boss") as client:
            session = (await execute(client, server.domain, CREATE_ACCOUNT))["command"]["sessionid"]
            canceled = await execute(client, server.domain, CREATE_ACCOUNT, action="cancel", sessionid=session)
            again = await error_of(client, server.domain, CREATE_ACCOUNT, action="complete", sessionid=session,
                                   payload=submit_form(client))
            return canceled, again
    canceled, again = run(scenario())
    assert canceled["command"]["status"] == "canceled"
    assert again == ("bad-request", "bad-sessionid")


# ---- sessions and admins, without a server ------------------------------------------------------

ALICE = JID("alice", "appliance.test", "phone")


def test_an_expired_session_says_so_once() -> None:
    commands = Commands()
    session = commands.open_session("node", ALICE)
    commands.sessions[session].expires = time.monotonic() - 1
    with pytest.raises(CommandError) as caught:
        commands.close_session(session, "node", ALICE)
    assert (caught.value.condition, caught.value.specific) == ("not-allowed", "session-expired")
    with pytest.raises(CommandError) as caught:
        commands.close_session(session, "node", ALICE)
    assert caught.value.specific == "bad-sessionid"


def test_open_sessions_are_bounded_and_expired_ones_forgotten() -> None:
    commands = Commands()
    stale = commands.open_session("node", ALICE)
    commands.sessions[stale].expires = time.monotonic() - 1
    first = commands.open_session("node", ALICE)
    assert stale not in commands.sessions
    for _ in range(MAX_SESSIONS):
        commands.open_session("node", ALICE)
    assert len(commands.sessions) == MAX_SESSIONS and first not in commands.sessions


def test_configured_admins_are_localparts_or_bare_jids_of_this_domain(caplog: pytest.LogCaptureFixture) -> None:
    entries = ("boss", "Chief@Appliance.test", "guest@elsewhere.example", "bad@", "x@appliance.test/phone")
    assert _configured(entries, "appliance.test") == {"boss", "chief"}
    assert "guest@elsewhere.example" in caplog.text and "'bad@'" in caplog.text


def test_the_pin_in_invites_is_the_served_certificate(tmp_path: Path) -> None:
    """One fingerprint implementation: net/certs delegates to pairing (checked against openssl's)."""
    cert = tmp_path / "cert.pem"
    ensure_certificate(cert, tmp_path / "key.pem", "appliance.test")
    openssl = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
                             capture_output=True, text=True, check=True).stdout
    assert fingerprint.fingerprint_sha256(cert) == fingerprint_sha256(cert) == openssl.strip().split("=", 1)[1]
