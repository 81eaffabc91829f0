"""XEP-0191 blocking command against a real server process: the blocklist IQs and their pushes,
and what a block keeps out (messages, IQs, presence both ways), with slixmpp and raw XML."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from tests.harness import ServerProcess
from tests.raw import RawClient
from tests.slix import Client, run
from tests.test_rfc6121 import befriend, expect, new_users, nothing, sent_by

BLOCKING = "urn:xmpp:blocking"
BLOCKED = "{urn:xmpp:blocking:errors}blocked"
LIMIT = 4
PLUGINS = ("xep_0030", "xep_0199", "xep_0191")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """This module's own server, with a blocklist limit small enough to reach."""
    proc = ServerProcess(tmp_path_factory.mktemp("blocking"), settings={"limits.blocklist_items": LIMIT})
    proc.start()
    yield proc
    proc.stop()


async def login(server: ServerProcess, jid: str, resource: str = "r", *, blocklist: bool = True) -> Client:
    """A client with presence sent, that records blocklist pushes and errors, and (by default) has
    asked for the blocklist, which is what makes the server push changes to it (§3.2)."""
    client = Client(server, f"{jid}/{resource}", plugins=PLUGINS)
    client.auto_authorize = None
    client.auto_subscribe = False
    client.pushes = asyncio.Queue()
    client.errors = asyncio.Queue()
    client.add_event_handler("blocked", client.pushes.put_nowait)
    client.add_event_handler("unblocked", client.pushes.put_nowait)
    client.add_event_handler("message_error", client.errors.put_nowait)
    await client.login(send_presence=False)
    client.send_presence()
    if blocklist:
        await client.plugin["xep_0191"].get_blocked_jids(timeout=5)
    await client.plugin["xep_0199"].ping(timeout=5)  # a round trip: the presence is handled
    return client


async def command(client: Client, payload: str, type_: str = "set") -> Any:
    iq = client.Iq()
    iq["type"] = type_
    iq.append(ET.fromstring(payload))
    return await iq.send(timeout=5)


async def refused(client: Client, payload: str) -> str:
    with pytest.raises(IqError) as caught:
        await command(client, payload)
    return caught.value.iq["error"]["condition"]


def pushed(verb: str, *jids: str) -> Any:
    """A push of `verb` ('block' or 'unblock') carrying exactly these JIDs, as the server wrote them."""
    def match(iq: Any) -> bool:
        element = iq.xml.find(f"{{{BLOCKING}}}{verb}")
        return element is not None and sorted(i.get("jid") for i in element) == sorted(jids)
    return match


async def ping(client: Client, to: str) -> str | None:
    """The error condition of an XEP-0199 ping to `to`, or None when it was answered."""
    try:
        await client.plugin["xep_0199"].send_ping(to, timeout=5)
    except IqError as exc:
        return exc.iq["error"]["condition"]
    return None


async def logout(*clients: Client) -> None:
    for client in clients:
        await client.logout()


# ---- the commands (§3.1 - §3.5) ------------------------------------------------------------------------

def test_block_unblock_and_pushes(server: ServerProcess) -> None:
    alice, bob, carol = new_users(server, "alice", "bob", "carol")
    domain = server.domain

    async def scenario() -> None:
        one, two = await login(server, alice, "one"), await login(server, alice, "two")
        quiet = await login(server, alice, "quiet", blocklist=False)
        info = await one.plugin["xep_0030"].get_info(jid=domain, timeout=5)
        assert BLOCKING in info["disco_info"]["features"]  # §3.1

        # JIDs are normalised (RFC 7622) before they are stored and pushed.
        await one.plugin["xep_0191"].block([bob.upper(), f"{carol}/Phone", "Example.ORG"], timeout=5)
        expected = (bob, f"{carol}/Phone", "example.org")
        for client in (one, two):  # §3.3: every resource that asked for the list, the asker too
            await expect(client.pushes, pushed("block", *expected))
        await nothing(quiet.pushes)
        assert {str(j) for j in await two.plugin["xep_0191"].get_blocked_jids(timeout=5)} == set(expected)
        listed = await command(two, f"<blocklist xmlns='{BLOCKING}'/>", "get")
        assert sorted(i.get("jid") for i in listed.xml.find(f"{{{BLOCKING}}}blocklist")) == sorted(expected)

        await one.plugin["xep_0191"].unblock([f"{carol}/Phone", "nobody@example.net"], timeout=5)
        await expect(two.pushes, pushed("unblock", f"{carol}/Phone"))  # §3.4: what really changed

        assert await refused(one, f"<block xmlns='{BLOCKING}'/>") == "bad-request"
        assert await refused(one, f"<block xmlns='{BLOCKING}'><item jid='@@bad'/></block>") == "jid-malformed"
        assert await refused(one, f"<block xmlns='{BLOCKING}'><item/></block>") == "jid-malformed"
        assert await refused(one, f"<block xmlns='{BLOCKING}'><item jid='{alice}'/></block>") == "not-allowed"

        await command(one, f"<unblock xmlns='{BLOCKING}'/>")  # §3.5: no items, everyone
        await expect(two.pushes, pushed("unblock"))
        assert await one.plugin["xep_0191"].get_blocked_jids(timeout=5) == set()
        await logout(one, two, quiet)

    run(scenario())


def test_limit(server: ServerProcess) -> None:
    (alice,) = new_users(server, "alice")

    async def scenario() -> None:
        a = await login(server, alice)
        blocking = a.plugin["xep_0191"]
        await blocking.block([f"u{n}@example.org" for n in range(LIMIT - 1)], timeout=5)
        await blocking.block(["u0@example.org", f"u{LIMIT - 1}@example.org"], timeout=5)  # one new: full now
        with pytest.raises(IqError) as caught:
            await blocking.block(["u0@example.org", "one.too.many@example.org", "and@example.org"], timeout=5)
        assert caught.value.iq["error"]["condition"] == "not-acceptable"
        assert len(await blocking.get_blocked_jids(timeout=5)) == LIMIT  # all or nothing
        await logout(a)

    run(scenario())


# ---- enforcement (§3.3) -----------------------------------------------------------------------------------------

def test_blocked_contact_is_refused_both_ways(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a, b = await login(server, alice), await login(server, bob)
        await a.plugin["xep_0191"].block(bob, timeout=5)  # the bare JID covers every resource

        b.send_message(mto=alice, mbody="let me in", mtype="chat")
        b.send_message(mto=a.boundjid.full, mbody="let me in", mtype="chat")
        for _ in range(2):
            error = await expect(b.errors, lambda _: True)
            assert error["error"]["condition"] == "service-unavailable"
        assert await ping(b, a.boundjid.full) == "service-unavailable"
        await nothing(a.messages)

        a.send_message(mto=b.boundjid.full, mbody="you are blocked", mtype="chat")
        error = await expect(a.errors, lambda _: True)
        assert error["error"]["condition"] == "not-acceptable"
        assert error.xml.find(f"{{jabber:client}}error/{BLOCKED}") is not None
        assert await ping(a, b.boundjid.full) == "not-acceptable"
        await nothing(b.messages)

        await a.plugin["xep_0191"].unblock(bob, timeout=5)
        b.send_message(mto=alice, mbody="hello again", mtype="chat")
        assert (await a.next_message())["body"] == "hello again"
        await logout(a, b)

    run(scenario())


def test_block_hides_presence_and_unblock_shows_it(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a, b = await login(server, alice), await login(server, bob)
        await befriend(a, b)
        await a.plugin["xep_0191"].block(bob, timeout=5)
        await expect(b.presences, sent_by(alice, available=False))  # §3.3: alice seems to leave

        a.send_presence(pstatus="busy")  # a broadcast skips bob
        b.send_presence(pstatus="away")  # and bob's does not reach alice
        await a.plugin["xep_0199"].ping(timeout=5)
        await b.plugin["xep_0199"].ping(timeout=5)
        await nothing(b.presences, sent_by(alice))
        await nothing(a.presences, sent_by(bob))

        await a.plugin["xep_0191"].unblock(bob, timeout=5)
        seen = await expect(b.presences, sent_by(alice, available=True))
        assert seen["status"] == "busy"  # her current presence
        back = await expect(a.presences, sent_by(bob, available=True))  # probed again
        assert back["status"] == "away"
        await logout(a, b)

    run(scenario())


def test_domain_and_full_jid_blocks(server: ServerProcess) -> None:
    alice, bob, carol = new_users(server, "alice", "bob", "carol")

    async def scenario() -> None:
        a = await login(server, alice)
        phone, laptop = await login(server, bob, "phone"), await login(server, bob, "laptop")
        c = await login(server, carol)

        await a.plugin["xep_0191"].block(f"{bob}/phone", timeout=5)  # just that resource
        phone.send_message(mto=alice, mbody="from the phone", mtype="chat")
        assert (await expect(phone.errors, lambda _: True))["error"]["condition"] == "service-unavailable"
        laptop.send_message(mto=alice, mbody="from the laptop", mtype="chat")
        assert (await a.next_message())["body"] == "from the laptop"

        await a.plugin["xep_0191"].block(server.domain, timeout=5)  # everyone at the domain
        for sender in (laptop, c):
            sender.send_message(mto=alice, mbody="blocked", mtype="chat")
            assert (await expect(sender.errors, lambda _: True))["error"]["condition"] == "service-unavailable"
        await nothing(a.messages)
        assert await ping(a, server.domain) is None  # the server itself still answers her

        await command(a, f"<unblock xmlns='{BLOCKING}'/>")
        c.send_message(mto=alice, mbody="free again", mtype="chat")
        assert (await a.next_message())["body"] == "free again"
        await logout(a, phone, laptop, c)

    run(scenario())


def test_blocklist_survives_a_restart(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    fresh_server.add_user("keeper")
    bob = fresh_server.add_user("pest")
    client = RawClient(fresh_server).open()
    client.login("keeper")
    client.send(f"<iq type='set' id='b1'><block xmlns='{BLOCKING}'><item jid='{bob}'/></block></iq>")
    assert b"type=\"result\"" in client.read_until(b"/>", b"</iq>")
    client.close()
    fresh_server.stop()

    fresh_server.start()
    client = RawClient(fresh_server).open()
    client.login("keeper")
    client.send(f"<iq type='get' id='b2'><blocklist xmlns='{BLOCKING}'/></iq>")
    assert f"jid=\"{bob}\"".encode() in client.read_until(b"</iq>")
    pest = RawClient(fresh_server).open()
    pest.login("pest")
    pest.send(f"<message to='keeper@{fresh_server.domain}' type='chat' id='m1'><body>hi</body></message>")
    assert b"service-unavailable" in pest.read_until(b"</message>")
    client.close()
    pest.close()
