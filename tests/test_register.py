"""XEP-0077 in-band registration against the real server, with slixmpp's xep_0077 plugin:
sign-up before login, password change and account removal after it, and the server with
registration switched off (the default)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from slixmpp.exceptions import IqError

from tests.harness import PASSWORD, ServerProcess
from tests.raw import RawClient
from tests.slix import Client, run

PLUGINS = ("xep_0030", "xep_0199", "xep_0077")


def client(server: ServerProcess, jid: str, password: str = PASSWORD) -> Client:
    """Make clients inside the running event loop (slixmpp binds to the loop it is created in)."""
    c = Client(server, jid, password, plugins=PLUGINS)
    return c




async def login(c: Client) -> Client:
    await c.login(send_presence=False, get_roster=False)
    return c


async def login_refused(server: ServerProcess, jid: str, password: str = PASSWORD) -> list[str]:
    c = client(server, jid, password)
    with pytest.raises(PermissionError):
        await login(c)
    await asyncio.wait_for(c.gone.wait(), 10)
    assert not c.sessionstarted
    return c.auth_failures


async def sign_up(server: ServerProcess, username: str, password: str = PASSWORD, *,
                  then_login: bool = False) -> tuple[Any, str | None, Client]:
    """Register over a new connection when the server offers the feature.

    Returns (the registration form the server sent, the error condition or None, the client). With
    `then_login` slixmpp goes on to log in with the new account on the same connection; otherwise
    the connection is dropped right after the answer.
    """
    valid = username.isalnum() and len(username) < 100
    jid = f"{username}@{server.domain}" if valid else f"placeholder@{server.domain}"
    c = client(server, jid, password)
    answered: asyncio.Future[tuple[Any, str | None]] = asyncio.get_running_loop().create_future()

    async def on_register(form: Any) -> None:
        iq = c.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = username
        iq["register"]["password"] = password
        try:
            await iq.send(timeout=10)
            condition = None
        except IqError as error:
            condition = error.iq["error"]["condition"]
        answered.set_result((form, condition))
        if condition or not then_login:
            c.abort()  # do not go on to SASL

    c.add_event_handler("register", on_register)
    if then_login:
        await login(c)
        form, condition = answered.result()
    else:
        c.connect("127.0.0.1", server.port)
        form, condition = await asyncio.wait_for(answered, 10)
        await asyncio.wait_for(c.gone.wait(), 10)
    return form, condition, c


# ---- registration enabled (the module's server) ----------------------------------------------------


def test_register_then_log_in(server: ServerProcess) -> None:
    async def scenario() -> tuple[Any, str | None, str, str]:
        form, condition, first = await sign_up(server, "newbie", "fresh password", then_login=True)
        bound = first.boundjid.bare
        await first.plugin["xep_0199"].ping(jid=server.domain, timeout=5)
        await first.logout()
        second = await login(client(server, f"newbie@{server.domain}", "fresh password"))
        try:
            return form, condition, bound, second.boundjid.bare
        finally:
            await second.logout()

    form, condition, bound_while_registering, bound_later = run(scenario())
    assert condition is None
    assert {"username", "password"} <= form["register"]["fields"]
    assert form["register"]["instructions"]
    assert bound_while_registering == bound_later == f"newbie@{server.domain}"
    assert server.logged(f"registered newbie@{server.domain} in-band")


def test_register_feature_is_advertised_after_tls_only(server: ServerProcess) -> None:
    raw = RawClient(server).connect()
    try:
        assert b"iq-register" not in raw.header()  # before STARTTLS only <starttls/> is offered
    finally:
        raw.close()
    raw = RawClient(server).open()
    try:
        assert b"<register xmlns=\"http://jabber.org/features/iq-register\"/>" in raw.features
    finally:
        raw.close()


@pytest.mark.parametrize("taken", ["dupe", "DUPE", "Dupe"])
def test_duplicate_username(server: ServerProcess, taken: str) -> None:
    if "dupe@" not in server.cli("user", "list").stdout:
        server.add_user("dupe")
    _, condition, _ = run(sign_up(server, taken, "another password"))
    assert condition == "conflict"
    run(login_refused(server, f"dupe@{server.domain}", "another password"))  # the old account is untouched


@pytest.mark.parametrize("username, password", [
    ("two words", PASSWORD), ("a/b", PASSWORD), ("at@sign", PASSWORD), ("x" * 1100, PASSWORD),
    ("", PASSWORD), ("nopassword", ""),
], ids=["space", "slash", "at", "too-long", "empty-username", "empty-password"])
def test_invalid_registration(server: ServerProcess, username: str, password: str) -> None:
    _, condition, _ = run(sign_up(server, username, password))
    assert condition == "not-acceptable"
    assert "nopassword@" not in server.cli("user", "list").stdout


# Passwords XML allows but SASLprep (RFC 4013) prohibits, so no SCRAM keys can be derived from them.
UNUSABLE_PASSWORDS = pytest.mark.parametrize("password", ["left\u200eto-right mark", "private\ue000use",
                                                          "mixed a\u05d0 bidi"], ids=["lrm", "private-use", "bidi"])

@UNUSABLE_PASSWORDS
def test_register_with_a_password_saslprep_refuses(server: ServerProcess, password: str) -> None:
    raw = RawClient(server).open()
    try:
        raw.send(f"<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>prepped</username>"
                 f"<password>{password}</password></query></iq>")
        reply = raw.read_until(b"</iq>")
        assert b"type=\"error\"" in reply and b"<not-acceptable" in reply, reply
    finally:
        raw.close()


@UNUSABLE_PASSWORDS
def test_password_change_to_a_password_saslprep_refuses(server: ServerProcess, password: str) -> None:
    if "prepchange@" not in server.cli("user", "list").stdout:
        server.add_user("prepchange")
    raw = RawClient(server).open()
    try:
        raw.login("prepchange", resource="r")
        raw.send(f"<iq type='set' id='p1'><query xmlns='jabber:iq:register'><username>prepchange</username>"
                 f"<password>{password}</password></query></iq>")
        reply = raw.read_until(b"</iq>")
        assert b"type=\"error\"" in reply and b"<not-acceptable" in reply, reply
        raw.send("<iq type='get' id='still'><ping xmlns='urn:xmpp:ping'/></iq>")  # the session goes on
        assert b"type=\"result\"" in raw.read_until(b"</iq>", b"/>")
    finally:
        raw.close()


def test_registration_form_after_login(server: ServerProcess) -> None:
    server.add_user("formcheck")

    async def scenario() -> tuple[bool, str]:
        c = await login(client(server, f"formcheck@{server.domain}"))
        try:
            form = await c.plugin["xep_0077"].get_registration(timeout=5)
            return form["register"]["registered"], form["register"]["username"]
        finally:
            await c.logout()

    assert run(scenario()) == (True, "formcheck")


def test_password_change(server: ServerProcess) -> None:
    jid = server.add_user("changer", "old password")

    async def scenario() -> tuple[str, list[str]]:
        c = await login(client(server, jid, "old password"))
        result = await c.plugin["xep_0077"].change_password("new password", timeout=5)
        await c.logout()
        again = await login(client(server, jid, "new password"))
        await again.logout()
        return result["type"], await login_refused(server, jid, "old password")

    result_type, old_failures = run(scenario())
    assert result_type == "result"
    assert old_failures and set(old_failures) == {"not-authorized"}
    assert server.logged("changer@appliance.test changed their password")


def test_password_change_for_someone_else_is_refused(server: ServerProcess) -> None:
    me, other = server.add_user("meddler"), server.add_user("victim")

    async def scenario() -> str:
        c = await login(client(server, me))
        iq = c.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = "victim"
        iq["register"]["password"] = "taken over"
        try:
            with pytest.raises(IqError) as caught:
                await iq.send(timeout=5)
            return caught.value.iq["error"]["condition"]
        finally:
            await c.logout()

    assert run(scenario()) == "not-allowed"

    async def victim_still_logs_in() -> None:
        await (await login(client(server, other))).logout()

    run(victim_still_logs_in())


def test_account_removal(server: ServerProcess) -> None:
    """<remove/>: the IQ result arrives, then every session of the account is closed."""
    jid = server.add_user("leaver")

    async def scenario() -> tuple[str, list[str], list[str]]:
        phone = await login(client(server, jid + "/phone"))
        laptop = await login(client(server, jid + "/laptop"))
        result = await phone.plugin["xep_0077"].cancel_registration(timeout=5)
        await asyncio.wait_for(phone.gone.wait(), 10)
        await asyncio.wait_for(laptop.gone.wait(), 10)
        return (result["type"], [e["condition"] for e in phone.stream_errors],
                [e["condition"] for e in laptop.stream_errors])

    result_type, phone_errors, laptop_errors = run(scenario())
    assert result_type == "result"
    assert phone_errors == laptop_errors == ["not-authorized"]
    assert "leaver@" not in server.cli("user", "list").stdout
    assert set(run(login_refused(server, jid))) == {"not-authorized"}
    assert server.logged("leaver@appliance.test removed their account")

    # The name is free again: a new sign-up takes it.
    _, condition, _ = run(sign_up(server, "leaver", "second life"))
    assert condition is None


# ---- registration disabled (the default) -------------------------------------------------------------


def test_registration_disabled(fresh_server: ServerProcess) -> None:
    fresh_server.start()  # default configuration: allow_registration = false
    fresh_server.add_user("existing")
    raw = RawClient(fresh_server).open()
    try:
        assert b"iq-register" not in raw.features and b"<mechanisms" in raw.features
        for type_, payload in [("get", ""), ("set", "<username>sneaky</username><password>pw</password>")]:
            raw.send(f"<iq type='{type_}' id='reg-{type_}'><query xmlns='jabber:iq:register'>{payload}</query></iq>")
            reply = raw.read_until(b"</iq>")
            assert b"type=\"error\"" in reply and b"<service-unavailable" in reply, reply
        # Only the IQ was refused: the stream goes on, and an existing account logs in on it.
        assert raw.login("existing", resource="r") == f"existing@{fresh_server.domain}/r"
    finally:
        raw.close()
    assert "sneaky@" not in fresh_server.cli("user", "list").stdout

    async def slixmpp_view() -> tuple[bool, list[str]]:
        asked: list[Any] = []
        c = client(fresh_server, f"sneaky@{fresh_server.domain}")
        c.add_event_handler("register", asked.append)  # would run if the feature were offered
        with pytest.raises(PermissionError):
            await login(c)
        return bool(asked), c.auth_failures

    asked, failures = run(slixmpp_view())
    assert not asked and set(failures) == {"not-authorized"}


def test_sign_ups_per_address_are_limited(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"allow_registration": True, "limits.registrations_per_address": 2}
    fresh_server.start()
    answers = []
    for n in range(3):
        raw = RawClient(fresh_server).open()
        raw.send(f"<iq type='set' id='r{n}'><query xmlns='jabber:iq:register'>"
                 f"<username>many{n}</username><password>{PASSWORD}</password></query></iq>")
        answers.append(raw.read_until(b"</iq>", f'id="r{n}"/>'.encode()))
        raw.close()
    assert [b'type="result"' in a for a in answers] == [True, True, False]
    assert b"policy-violation" in answers[2]
    assert fresh_server.cli("user", "list").stdout.count("many") == 2
