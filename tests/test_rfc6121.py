"""RFC 6121 (roster, subscriptions, presence, delivery by priority) and XEP-0160 offline messages,
with slixmpp clients against a real server process."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterator

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from tests.harness import ServerProcess
from tests.slix import Client, run

OFFLINE_LIMIT = 3
ROSTER = "jabber:iq:roster"
DELAY = "urn:xmpp:delay"
QUIET = 0.6  # how long "nothing arrives" is watched for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """This module's own server, with an offline limit small enough to reach."""
    proc = ServerProcess(tmp_path_factory.mktemp("rfc6121"), settings={"limits.offline_per_user": OFFLINE_LIMIT})
    proc.start()
    yield proc
    proc.stop()


def new_users(server: ServerProcess, *names: str) -> list[str]:
    return server.add_users(*names, prefix="")


async def login(server: ServerProcess, jid: str, resource: str | None = None, *, priority: int | None = None,
                presence: bool = True, roster: bool = True) -> Client:
    """A client that answers no subscription request by itself and records roster pushes and errors."""
    client = Client(server, f"{jid}/{resource}" if resource else jid)
    client.auto_authorize = None
    client.auto_subscribe = False
    client.pushes = asyncio.Queue()
    client.errors = asyncio.Queue()
    client.unsubscriptions = asyncio.Queue()
    client.add_event_handler("roster_update", lambda iq: iq["type"] == "set" and client.pushes.put_nowait(iq))
    client.add_event_handler("message_error", client.errors.put_nowait)
    client.add_event_handler("presence_unsubscribe", client.unsubscriptions.put_nowait)
    client.add_event_handler("presence_unsubscribed", client.unsubscriptions.put_nowait)
    await client.login(send_presence=False, get_roster=roster)
    if presence:
        client.send_presence(ppriority=priority)
        await client.plugin["xep_0199"].ping(timeout=5)  # a round trip: the presence is handled
    return client


async def expect(queue: asyncio.Queue, match: Callable[[Any], bool], timeout: float = 5) -> Any:
    async def first() -> Any:
        while True:
            item = await queue.get()
            if match(item):
                return item
    return await asyncio.wait_for(first(), timeout)


async def nothing(queue: asyncio.Queue, match: Callable[[Any], bool] = lambda _: True) -> None:
    try:
        item = await expect(queue, match, QUIET)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected: {item}")


def sent_by(bare: str, available: bool | None = None) -> Callable[[Any], bool]:
    def match(stanza: Any) -> bool:
        if stanza["from"].bare != bare:
            return False
        return available is None or (stanza["type"] != "unavailable") == available
    return match


def push_for(contact: str, subscription: str | None = None, ask: str | None = None) -> Callable[[Any], bool]:
    def match(iq: Any) -> bool:
        item = iq["roster"]["items"].get(JID(contact))
        return item is not None and subscription in (None, item["subscription"]) and (ask is None or item["ask"] == ask)
    return match


async def roster_query(client: Client, payload: str | None = None, type_: str = "get") -> Any:
    iq = client.Iq()
    iq["type"] = type_
    iq.append(ET.fromstring(payload or f"<query xmlns='{ROSTER}'/>"))
    return await iq.send(timeout=5)


async def stored_roster(client: Client) -> dict[str, tuple[str, str]]:
    """What the server holds: contact -> (subscription, ask)."""
    result = await roster_query(client)
    return {str(jid): (item["subscription"], item["ask"]) for jid, item in result["roster"]["items"].items()}


async def roster_error(client: Client, item_xml: str) -> str:
    with pytest.raises(IqError) as caught:
        await roster_query(client, f"<query xmlns='{ROSTER}'>{item_xml}</query>", "set")
    return caught.value.iq["error"]["condition"]


async def befriend(a: Client, b: Client) -> None:
    """Both ways, step by step, as two people would (RFC 6121 §3.1)."""
    for asker, answerer in ((a, b), (b, a)):
        asker.send_presence_subscription(pto=answerer.boundjid.bare, ptype="subscribe")
        await expect(answerer.subscriptions, sent_by(asker.boundjid.bare))
        answerer.send_presence_subscription(pto=asker.boundjid.bare, ptype="subscribed")
        await expect(asker.presences, sent_by(answerer.boundjid.bare, available=True))  # §3.1.5


# ---- roster (§2) ------------------------------------------------------------------------------------

def test_roster_set_get_remove_and_versioning(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a = await login(server, alice)
        assert {"rosterver", "preapproval"} <= a.features  # §2.6.1, §3.4.1
        await roster_query(a, f"<query xmlns='{ROSTER}'><item jid='{bob}' name='Bob'>"
                              "<group>Friends</group><group>Work</group></item></query>", "set")
        result = await roster_query(a)
        item = result["roster"]["items"][JID(bob)]
        assert (item["name"], set(item["groups"]), item["subscription"]) == ("Bob", {"Friends", "Work"}, "none")
        version = result["roster"]["ver"]
        assert version
        same = await roster_query(a, f"<query xmlns='{ROSTER}' ver='{version}'/>")
        assert same.xml.find(f"{{{ROSTER}}}query") is None  # §2.6.3: up to date, nothing sent
        stale = await roster_query(a, f"<query xmlns='{ROSTER}' ver='0'/>")
        assert JID(bob) in stale["roster"]["items"]

        assert await roster_error(a, f"<item jid='{bob}'/><item jid='x@{server.domain}'/>") == "bad-request"
        assert await roster_error(a, f"<item jid='{alice}'/>") == "not-allowed"
        assert await roster_error(a, f"<item jid='{bob}'><group>A</group><group>A</group></item>") == "bad-request"
        assert await roster_error(a, f"<item jid='{bob}'><group></group></item>") == "not-acceptable"
        assert await roster_error(a, "<item jid='@@bad'/>") == "jid-malformed"

        await roster_query(a, f"<query xmlns='{ROSTER}'><item jid='{bob}' subscription='remove'/></query>", "set")
        after = await roster_query(a)
        assert JID(bob) not in after["roster"]["items"]
        assert after["roster"]["ver"] != version
        assert await roster_error(a, f"<item jid='{bob}' subscription='remove'/>") == "item-not-found"
        await a.logout()

    run(scenario())


def test_roster_push_reaches_interested_resources_only(server: ServerProcess) -> None:
    alice, carol = new_users(server, "alice", "carol")

    async def scenario() -> None:
        one = await login(server, alice, "one")
        two = await login(server, alice, "two")
        quiet = await login(server, alice, "quiet", roster=False)  # never asked: not interested (§2.1.6)
        await roster_query(one, f"<query xmlns='{ROSTER}'><item jid='{carol}' name='C'/></query>", "set")
        push = await expect(two.pushes, push_for(carol, "none"))
        assert push["roster"]["ver"]
        await expect(one.pushes, push_for(carol))
        await nothing(quiet.pushes)
        for client in (one, two, quiet):
            await client.logout()

    run(scenario())


# ---- subscriptions (§3) ----------------------------------------------------------------------------------

def test_subscription_both_ways(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a, b = await login(server, alice), await login(server, bob)
        a.send_presence_subscription(pto=bob, ptype="subscribe")
        request = await expect(b.subscriptions, sent_by(alice))
        assert request["from"] == JID(alice)  # §3.1.2: stamped with the bare JID
        await expect(a.pushes, push_for(bob, "none", ask="subscribe"))
        b.send_presence_subscription(pto=alice, ptype="subscribed")
        await expect(a.pushes, push_for(bob, "to"))
        await expect(a.presences, sent_by(bob, available=True))
        b.send_presence_subscription(pto=alice, ptype="subscribe")
        await expect(a.subscriptions, sent_by(bob))
        a.send_presence_subscription(pto=bob, ptype="subscribed")
        await expect(b.pushes, push_for(alice, "both"))
        await expect(b.presences, sent_by(alice, available=True))
        assert (await stored_roster(a))[bob] == ("both", "")
        assert (await stored_roster(b))[alice] == ("both", "")
        await a.logout()
        await b.logout()

    run(scenario())


def test_unsubscribe_and_unsubscribed(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a, b = await login(server, alice), await login(server, bob)
        await befriend(a, b)
        a.send_presence_subscription(pto=bob, ptype="unsubscribe")  # alice stops seeing bob
        await expect(b.unsubscriptions, sent_by(alice))
        await expect(a.presences, sent_by(bob, available=False))
        assert (await stored_roster(a))[bob] == ("from", "")
        assert (await stored_roster(b))[alice] == ("to", "")
        a.send_presence_subscription(pto=bob, ptype="unsubscribed")  # and bob stops seeing alice
        await expect(b.presences, sent_by(alice, available=False))  # §3.2.2
        await expect(b.unsubscriptions, sent_by(alice))
        assert (await stored_roster(a))[bob] == ("none", "")
        assert (await stored_roster(b))[alice] == ("none", "")
        await a.logout()
        await b.logout()

    run(scenario())


def test_pending_request_is_redelivered_at_each_login(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a = await login(server, alice)
        a.send_presence_subscription(pto=bob, ptype="subscribe")
        await expect(a.pushes, push_for(bob, "none", ask="subscribe"))
        for _ in range(2):  # §3.1.3: until the contact answers
            b = await login(server, bob)
            await expect(b.subscriptions, sent_by(alice))
            await b.logout()
        b = await login(server, bob)
        await expect(b.subscriptions, sent_by(alice))
        b.send_presence_subscription(pto=alice, ptype="subscribed")
        await expect(a.pushes, push_for(bob, "to"))
        await b.logout()
        b = await login(server, bob)
        await nothing(b.subscriptions)
        await a.logout()
        await b.logout()

    run(scenario())


def test_pre_approval(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a, b = await login(server, alice), await login(server, bob)
        a.send_presence_subscription(pto=bob, ptype="subscribed")  # §3.4.1: before bob asks
        push = await expect(a.pushes, push_for(bob, "none"))
        assert push["roster"]["items"][JID(bob)]["approved"] in (True, "true")
        b.send_presence_subscription(pto=alice, ptype="subscribe")
        await expect(b.pushes, push_for(alice, "to"))  # answered by the server for alice (§3.4.2)
        await expect(b.presences, sent_by(alice, available=True))
        await nothing(a.subscriptions)
        assert (await stored_roster(a))[bob] == ("from", "")
        await a.logout()
        await b.logout()

    run(scenario())


def test_roster_remove_ends_both_subscriptions(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a, b = await login(server, alice), await login(server, bob)
        await befriend(a, b)
        await roster_query(a, f"<query xmlns='{ROSTER}'><item jid='{bob}' subscription='remove'/></query>", "set")
        await expect(b.presences, sent_by(alice, available=False))
        await expect(b.pushes, push_for(alice, "none"))
        assert bob not in await stored_roster(a)
        await a.logout()
        await b.logout()

    run(scenario())


# ---- presence (§4) ---------------------------------------------------------------------------------------

def test_presence_on_login_logout_and_disconnect(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a, b = await login(server, alice), await login(server, bob)
        await befriend(a, b)
        await b.logout()  # no unavailable presence from the client: the server says it
        await expect(a.presences, sent_by(bob, available=False))
        b = await login(server, bob)
        await expect(a.presences, sent_by(bob, available=True))   # broadcast
        await expect(b.presences, sent_by(alice, available=True))  # probe answered
        b.abort()  # the connection just drops
        await expect(a.presences, sent_by(bob, available=False))
        await a.logout()

    run(scenario())


def test_directed_presence(server: ServerProcess) -> None:
    bob, carol = new_users(server, "bob", "carol")

    async def scenario() -> None:
        b = await login(server, bob)
        c = await login(server, carol)
        c.send_presence(pto=b.boundjid.full, pstatus="hello")
        seen = await expect(b.presences, sent_by(carol, available=True))
        assert seen["status"] == "hello"
        await c.logout()
        await expect(b.presences, sent_by(carol, available=False))  # §4.6.3
        await b.logout()

    run(scenario())


# ---- message delivery by priority (§8.5) -------------------------------------------------------------------

def test_messages_follow_priority(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        high = await login(server, bob, "high", priority=5)
        low = await login(server, bob, "low", priority=1)
        a = await login(server, alice)
        a.send_message(mto=bob, mbody="to the bare JID", mtype="chat")
        assert (await high.next_message())["body"] == "to the bare JID"
        a.send_message(mto=low.boundjid.full, mbody="to one resource", mtype="chat")
        assert (await low.next_message())["body"] == "to one resource"
        await nothing(high.messages)
        await nothing(low.messages)
        for client in (a, high, low):
            await client.logout()

    run(scenario())


def test_negative_priority_gets_no_bare_jid_messages(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        b = await login(server, bob, priority=-1)
        a = await login(server, alice)
        a.send_message(mto=bob, mbody="kept for later", mtype="chat")
        await nothing(b.messages)
        a.send_message(mto=b.boundjid.full, mbody="straight to you", mtype="chat")
        assert (await b.next_message())["body"] == "straight to you"
        await nothing(a.errors)
        await a.logout()
        await b.logout()

    run(scenario())


# ---- offline messages (XEP-0160) -----------------------------------------------------------------------------

def test_offline_message_delivered_once_with_delay(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a = await login(server, alice)
        a.send_message(mto=bob, mbody="while you were out", mtype="chat")
        a.send_message(mto=bob, mbody="and another", mtype="normal")
        await stored_roster(a)  # the server handles a stream in order: both are stored by now
        b = await login(server, bob)
        first, second = await b.next_message(), await b.next_message()
        assert (first["body"], second["body"]) == ("while you were out", "and another")
        delay = first.xml.find(f"{{{DELAY}}}delay")
        assert delay is not None and delay.get("from") == server.domain and delay.get("stamp").endswith("Z")
        await b.logout()
        b = await login(server, bob)
        await nothing(b.messages)
        await nothing(a.errors)
        await a.logout()
        await b.logout()

    run(scenario())


def test_full_offline_storage_answers_with_an_error(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a = await login(server, alice)
        for n in range(OFFLINE_LIMIT + 1):
            a.send_message(mto=bob, mbody=f"message {n}", mtype="chat")
        error = await expect(a.errors, lambda _: True)
        assert error["error"]["condition"] == "service-unavailable"
        assert error["from"].bare == bob
        b = await login(server, bob)
        bodies = [(await b.next_message())["body"] for _ in range(OFFLINE_LIMIT)]
        assert bodies == [f"message {n}" for n in range(OFFLINE_LIMIT)]
        await a.logout()
        await b.logout()

    run(scenario())
