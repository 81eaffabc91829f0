"""Redeeming invites over XMPP against the real server, with slixmpp as the phone: XEP-0445 (the
token before XEP-0077 registration, on a server with registration switched off), XEP-0379 (a
contact invite's token in a subscription request). Invites are made directly in the server's
database (the server shares it under WAL), as `appliance invite` would."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Iterator

import pytest
from slixmpp.exceptions import IqError
from slixmpp.stanza import Iq, Presence, StreamFeatures
from slixmpp.xmlstream import ElementBase, register_stanza_plugin

from appliance.pairing.invites import ACCOUNT, CONTACT, Invite, new_invite
from appliance.store import invites as store
from appliance.store.db import Database
from tests.harness import PASSWORD, ServerProcess
from tests.raw import RawClient
from tests.slix import Client, run
from tests.test_rfc6121 import expect, login, nothing, push_for, sent_by

IBR_TOKEN, INVITE, PARS = "urn:xmpp:ibr-token:0", "urn:xmpp:invite", "urn:xmpp:pars:0"


class IbrTokenFeature(ElementBase):
    name, namespace, plugin_attrib, interfaces = "register", IBR_TOKEN, "ibr_token", set()


class Preauth(ElementBase):
    name, namespace, plugin_attrib, interfaces = "preauth", PARS, "preauth", {"token"}


register_stanza_plugin(StreamFeatures, IbrTokenFeature)
register_stanza_plugin(Iq, Preauth)
register_stanza_plugin(Presence, Preauth)


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with registration switched off (the default): only an invite lets anyone in."""
    proc = ServerProcess(tmp_path_factory.mktemp("invites"), settings={"limits.registrations_per_address": 1000})
    proc.start()
    yield proc
    proc.stop()


def database(server: ServerProcess) -> Database:
    return Database.open(server.data / "appliance.sqlite3")


def make_invite(server: ServerProcess, kind: str = ACCOUNT, **options: Any) -> Invite:
    options.setdefault("inviter", None)
    invite = new_invite(kind, now=options.pop("now", time.time()), **options)
    db = database(server)
    try:
        db.write_sync(store.insert_invite, invite)
    finally:
        db.close()
    return invite


def stored(server: ServerProcess, fn: Callable[..., Any], *args: Any) -> Any:
    db = database(server)
    try:
        return db.write_sync(fn, *args)
    finally:
        db.close()


class Invitee(Client):
    """A phone that scanned an invite, as Conversations does it: sees the ibr-token stream feature,
    sends the token, registers (XEP-0077), then logs in with the new account on the same stream.
    `outcome` is (step, error condition, error text): (None, None, None) once registered. With
    `hold`, it waits for that event between the accepted token and the registration."""

    def __init__(self, server: ServerProcess, token: str, username: str, password: str = PASSWORD,
                 hold: asyncio.Event | None = None) -> None:
        super().__init__(server, f"{username}@{server.domain}", password,
                         plugins=("xep_0030", "xep_0199", "xep_0077"))
        self.token, self.username, self.hold = token, username, hold
        self.auto_authorize, self.auto_subscribe = None, False  # the server, not the client, approves
        self.outcome: asyncio.Future[tuple[str | None, str | None, str | None]] = \
            asyncio.get_running_loop().create_future()
        self.form: Any = None
        self.token_accepted = asyncio.Event()
        self.register_feature("ibr_token", self._redeem, order=40)  # before SASL (100)

    async def _redeem(self, features: Any) -> bool:
        if "mechanisms" in self.features:
            return False
        try:
            await self._send_token()
            self.token_accepted.set()
            if self.hold is not None:
                await self.hold.wait()
            await self._register()
        except IqError as error:
            self.outcome.set_result((self._step, error.iq["error"]["condition"], error.iq["error"]["text"]))
            self.abort()
            return True
        self.outcome.set_result((None, None, None))
        return False  # on to SASL, as the new account

    async def _send_token(self) -> None:
        self._step = "preauth"
        iq = self.Iq()
        iq["type"] = "set"
        iq["preauth"]["token"] = self.token
        # Before login slixmpp sends only bind, session and registration IQs, and holds back the
        # rest; the token comes before login by design (XEP-0445).
        self._always_send_everything = True
        try:
            answer = iq.send(timeout=10)
        finally:
            self._always_send_everything = False
        await answer

    async def _register(self) -> None:
        self._step = "register"
        self.form = await self.plugin["xep_0077"].get_registration(timeout=10)
        iq = self.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.username
        iq["register"]["password"] = self.password
        await iq.send(timeout=10)


    async def redeem(self) -> tuple[str | None, str | None, str | None]:
        """Run the whole flow; on success the client is logged in (roster fetched, presence sent)."""
        started = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
        self.connect("127.0.0.1", self.appliance.port)
        outcome = await asyncio.wait_for(self.outcome, 15)
        if outcome[0] is None:
            await asyncio.wait_for(started, 15)
            await self.get_roster()
            self.send_presence()
        else:
            await asyncio.wait_for(self.gone.wait(), 10)
        return outcome


    async def leave(self) -> None:
        if not self.gone.is_set():  # a refused client has already gone
            await self.logout()


async def redeem(server: ServerProcess, token: str, username: str) -> tuple[Any, Invitee]:
    c = Invitee(server, token, username)
    return await c.redeem(), c


def redeem_once(server: ServerProcess, token: str, username: str) -> tuple[str | None, str | None, str | None]:
    async def scenario() -> tuple[str | None, str | None, str | None]:
        outcome, c = await redeem(server, token, username)
        await c.leave()
        return outcome
    return run(scenario())


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        await asyncio.sleep(0.05)


def subscription(c: Client, jid: str) -> str:
    return c.client_roster[jid]["subscription"] if jid in c.client_roster else "absent"


def users(server: ServerProcess) -> str:
    return server.cli("user", "list").stdout


# ---- XEP-0445: registration with a token ----------------------------------------------------------


def test_both_register_features_are_offered_with_registration_off(closed: ServerProcess) -> None:
    raw = RawClient(closed).open()
    try:
        assert f'<register xmlns="{IBR_TOKEN}"/>'.encode() in raw.features
        assert f'<register xmlns="{INVITE}"/>'.encode() in raw.features
        assert b"iq-register" not in raw.features  # the open kind stays off
    finally:
        raw.close()


@pytest.mark.parametrize("admin", [False, True], ids=["user", "admin"])
def test_account_invite_registers_logs_in_and_works_once(closed: ServerProcess, admin: bool) -> None:
    name = f"scanned{int(admin)}"
    invite = make_invite(closed, admin=admin)

    async def scenario() -> tuple[Any, str]:
        outcome, c = await redeem(closed, invite.token, name)
        assert outcome == (None, None, None)
        await c.plugin["xep_0199"].ping(jid=closed.domain, timeout=5)
        bound = c.boundjid.bare
        await c.logout()
        return bound, await again()

    async def again() -> Any:
        outcome, _ = await redeem(closed, invite.token, name + "x")
        return outcome

    bound, second = run(scenario())
    assert bound == f"{name}@{closed.domain}"
    assert second == ("preauth", "item-not-found", "this invite has been used up")
    assert f"{name}x@" not in users(closed)
    assert stored(closed, store.is_admin, name) is admin
    assert stored(closed, store.get_invite, invite.token).uses == 1
    assert closed.logged(f"{name}@{closed.domain} registered with account invite {invite.token[:4]}…")
    assert invite.token not in closed.log_text()


@pytest.mark.parametrize("problem", ["expired", "revoked", "unknown"])
def test_unusable_token_is_refused(closed: ServerProcess, problem: str) -> None:
    if problem == "expired":
        token = make_invite(closed, now=time.time() - 120, ttl=60).token
    elif problem == "revoked":
        token = make_invite(closed).token
        assert stored(closed, store.revoke, token)
    else:
        token = "not-a-token-anyone-made"
    step, condition, text = redeem_once(closed, token, f"refused{problem}")
    assert (step, condition) == ("preauth", "item-not-found")
    assert text == {"expired": "this invite has expired", "revoked": "this invite has been revoked",
                    "unknown": "unknown invite token"}[problem]
    assert f"refused{problem}@" not in users(closed)


def test_multi_use_invite_works_until_used_up(closed: ServerProcess) -> None:
    invite = make_invite(closed, max_uses=2)
    assert redeem_once(closed, invite.token, "multi1") == (None, None, None)
    assert redeem_once(closed, invite.token, "multi2") == (None, None, None)
    assert redeem_once(closed, invite.token, "multi3") == ("preauth", "item-not-found", "this invite has been used up")
    assert {"multi1@", "multi2@"} <= set(u.split(closed.domain)[0] for u in users(closed).split())


def test_preset_username_is_enforced_and_kept(closed: ServerProcess) -> None:
    invite = make_invite(closed, username="juliet")
    other = make_invite(closed)

    async def wrong_name() -> tuple[Any, str]:
        outcome, c = await redeem(closed, invite.token, "romeo")
        return outcome, c.form["register"]["username"]

    outcome, offered = run(wrong_name())
    assert outcome == ("register", "not-acceptable", "this invite is for the username juliet")
    assert offered == "juliet"  # the registration form comes filled in
    # XEP-0445 §5: the name waits for its invitee; another invite cannot take it.
    assert redeem_once(closed, other.token, "juliet")[:2] == ("register", "conflict")
    assert stored(closed, store.get_invite, invite.token).uses == 0
    assert redeem_once(closed, invite.token, "juliet") == (None, None, None)
    assert redeem_once(closed, other.token, "romeo") == (None, None, None)


def test_failed_registration_leaves_the_token_usable(closed: ServerProcess) -> None:
    closed.add_user("taken")
    invite = make_invite(closed)
    assert redeem_once(closed, invite.token, "taken") == ("register", "conflict", "that username is taken")
    assert stored(closed, store.get_invite, invite.token).uses == 0
    assert redeem_once(closed, invite.token, "untaken") == (None, None, None)


def test_two_streams_race_for_a_single_use_token(closed: ServerProcess) -> None:
    invite = make_invite(closed)

    async def scenario() -> list[Any]:
        first = Invitee(closed, invite.token, "racer1", hold=asyncio.Event())
        second = Invitee(closed, invite.token, "racer2", hold=asyncio.Event())
        running = [asyncio.ensure_future(c.redeem()) for c in (first, second)]
        await until(lambda: first.token_accepted.is_set() and second.token_accepted.is_set())
        outcomes = []
        for c, task in zip((first, second), running):
            assert c.hold is not None
            c.hold.set()
            outcomes.append(await task)
        await first.leave()
        return outcomes

    assert run(scenario()) == [(None, None, None), ("register", "forbidden", "this invite has been used up")]
    assert "racer2@" not in users(closed)


def test_a_token_that_expires_after_it_was_presented_still_registers(closed: ServerProcess) -> None:
    """XEP-0445 §4: the expiry is checked when the token is presented, not later on that stream."""
    invite = make_invite(closed, ttl=2.0)
    assert invite.expires is not None

    async def scenario() -> Any:
        c = Invitee(closed, invite.token, "latecomer", hold=asyncio.Event())
        pending = asyncio.ensure_future(c.redeem())
        await asyncio.wait_for(c.token_accepted.wait(), 10)
        await asyncio.sleep(invite.expires - time.time() + 0.2)
        assert c.hold is not None
        c.hold.set()
        outcome = await pending
        await c.leave()
        return outcome

    assert run(scenario()) == (None, None, None)
    assert stored(closed, store.get_invite, invite.token).problem(time.time()) == "expired"


# ---- contacts: the invitee and the inviter end up subscribed both ways --------------------------------


@pytest.mark.parametrize("kind", [CONTACT, ACCOUNT])
def test_registering_with_a_users_invite_makes_both_contacts(closed: ServerProcess, kind: str) -> None:
    """`xmpp:host@domain?roster;preauth=T;ibr=y` (or a user's account invite) registered through."""
    host = closed.add_user(f"host{kind}")
    invite = make_invite(closed, kind, inviter=f"host{kind}")
    guest = f"guest{kind}@{closed.domain}"

    async def scenario() -> None:
        inviter = await login(closed, host)
        outcome, invitee = await redeem(closed, invite.token, f"guest{kind}")
        assert outcome == (None, None, None)
        await expect(inviter.pushes, push_for(guest, "both"))  # pushed to the inviter's session
        assert subscription(invitee, host) == "both"            # the new account's first roster
        await expect(inviter.presences, sent_by(guest, available=True))
        await until(lambda: bool(invitee.client_roster[host].resources))  # the inviter's presence
        await nothing(inviter.subscriptions)  # nobody had to approve anything
        await inviter.logout()
        await invitee.logout()

    run(scenario())
    assert closed.logged(f"{guest} registered with {kind} invite {invite.token[:4]}… from host{kind}")


def test_contact_invite_in_a_subscription_request_is_approved(closed: ServerProcess) -> None:
    """XEP-0379 §3.4: an existing account adds the inviter with the token; nobody has to answer."""
    host, guest = closed.add_user("orsino"), closed.add_user("viola")
    invite = make_invite(closed, CONTACT, inviter="orsino")

    async def scenario() -> None:
        inviter, invitee = await login(closed, host), await login(closed, guest)
        approvals: asyncio.Queue[Any] = asyncio.Queue()
        invitee.add_event_handler("presence_subscribed", approvals.put_nowait)
        request = invitee.make_presence(pto=host, ptype="subscribe")
        request["preauth"]["token"] = invite.token
        request.send()
        await expect(approvals, sent_by(host))
        await expect(invitee.pushes, push_for(host, "both"))
        await expect(inviter.pushes, push_for(guest, "both"))
        await expect(invitee.presences, sent_by(host, available=True))
        await expect(inviter.presences, sent_by(guest, available=True))
        await nothing(inviter.subscriptions)  # the inviter was never asked
        await inviter.logout()
        await invitee.logout()

    run(scenario())
    assert stored(closed, store.get_invite, invite.token).uses == 1
    assert closed.logged(f"{guest} used contact invite {invite.token[:4]}… from {host}")


@pytest.mark.parametrize("bad", ["unknown", "someone else's"])
def test_subscription_request_with_a_bad_token_asks_the_inviter(closed: ServerProcess, bad: str) -> None:
    number = ["unknown", "someone else's"].index(bad)
    host, guest = closed.add_user(f"tybalt{number}"), closed.add_user(f"mercutio{number}")
    other = make_invite(closed, CONTACT, inviter=closed.add_user(f"benvolio{number}").split("@")[0])
    token = "no-such-token" if bad == "unknown" else other.token

    async def scenario() -> str:
        inviter, invitee = await login(closed, host), await login(closed, guest)
        request = invitee.make_presence(pto=host, ptype="subscribe")
        request["preauth"]["token"] = token
        request.send()
        await expect(inviter.subscriptions, sent_by(guest))  # asked as usual
        await expect(invitee.pushes, push_for(host, "none", ask="subscribe"))
        await nothing(inviter.pushes)  # nothing approved on the inviter's side
        state = subscription(invitee, host)
        await inviter.logout()
        await invitee.logout()
        return state

    assert run(scenario()) == "none"
    assert stored(closed, store.get_invite, other.token).uses == 0
