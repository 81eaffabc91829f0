"""XEP-0280 Message Carbons with slixmpp clients against a real server process.

"Nothing arrived" is checked without sleeping: after a message that must not be copied, one that
must be copied is sent along the same path, and it has to be the first copy to arrive.
"""

from __future__ import annotations

import asyncio
from typing import Any

from slixmpp.xmlstream import ET

from tests.harness import ServerProcess
from tests.slix import Client, run

CARBONS = "urn:xmpp:carbons:2"
HINTS = "urn:xmpp:hints"
RECEIPTS = "urn:xmpp:receipts"
CHATSTATES = "http://jabber.org/protocol/chatstates"
PLUGINS = ("xep_0030", "xep_0199", "xep_0297", "xep_0280")


def new_users(server: ServerProcess, *names: str) -> list[str]:
    return server.add_users(*names, prefix="carbons")


async def login(server: ServerProcess, jid: str, resource: str, *, carbons: bool = True,
                priority: int | None = None) -> Client:
    """A client whose carbon copies (both kinds) land in `client.carbons` as (kind, inner message)."""
    client = Client(server, f"{jid}/{resource}", plugins=PLUGINS)
    client.carbons = asyncio.Queue()
    client.add_event_handler("carbon_received",
                             lambda m: client.carbons.put_nowait(("received", m["carbon_received"])))
    client.add_event_handler("carbon_sent", lambda m: client.carbons.put_nowait(("sent", m["carbon_sent"])))
    await client.login(send_presence=False, get_roster=False)
    if carbons:
        await client.plugin["xep_0280"].enable(timeout=5)
    client.send_presence(ppriority=priority)
    await client.plugin["xep_0199"].ping(timeout=5)  # a round trip: the presence has been handled
    return client


async def next_carbon(client: Client, timeout: float = 5) -> tuple[str, Any]:
    return await asyncio.wait_for(client.carbons.get(), timeout)


def message(sender: Client, to: str, body: str | None, mtype: str = "chat", *extra: str) -> None:
    msg = sender.make_message(mto=to, mbody=body, mtype=mtype)
    for xml in extra:
        msg.append(ET.fromstring(xml))
    msg.send()


async def settle(*clients: Client) -> None:
    """A round trip for each client: whatever was queued for it before has arrived."""
    await asyncio.gather(*(c.plugin["xep_0199"].ping(timeout=5) for c in clients))


async def logout(*clients: Client) -> None:
    await asyncio.gather(*(c.logout() for c in clients))


def test_enable_disable_and_disco(server: ServerProcess) -> None:
    (alice,) = new_users(server, "alice")

    async def scenario() -> None:
        a = await login(server, alice, "phone", carbons=False)
        info = await a.plugin["xep_0030"].get_info(jid=server.domain, timeout=5)
        assert CARBONS in info["disco_info"]["features"]
        for _ in range(2):  # §9.1: repeating an enable or a disable is not an error
            assert (await a.plugin["xep_0280"].enable(timeout=5))["type"] == "result"
        for _ in range(2):
            assert (await a.plugin["xep_0280"].disable(timeout=5))["type"] == "result"
        await a.logout()

    run(scenario())


def test_received_carbon_for_full_jid_message(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a = await login(server, alice, "a")
        phone, desktop = await login(server, bob, "phone"), await login(server, bob, "desktop")
        message(a, f"{bob}/phone", "to the phone only")
        got = await phone.next_message()
        assert got["body"] == "to the phone only"
        kind, inner = await next_carbon(desktop)
        assert kind == "received"
        assert inner["body"] == "to the phone only"
        assert (inner["from"].full, inner["to"].full) == (f"{alice}/a", f"{bob}/phone")
        # The recipient itself gets no copy, and the sender's own devices get no received carbon.
        message(a, f"{bob}/desktop", "now the desktop")
        kind, inner = await next_carbon(phone)
        assert (kind, inner["body"]) == ("received", "now the desktop")
        await settle(a, phone, desktop)
        assert desktop.carbons.empty() and a.carbons.empty()
        await logout(a, phone, desktop)

    run(scenario())


def test_received_carbon_for_lower_priority_resource(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a = await login(server, alice, "a")
        high, low = await login(server, bob, "high", priority=5), await login(server, bob, "low", priority=1)
        message(a, bob, "to the bare JID")
        assert (await high.next_message())["body"] == "to the bare JID"
        kind, inner = await next_carbon(low)
        assert (kind, inner["body"]) == ("received", "to the bare JID")
        await settle(high)
        assert high.carbons.empty()
        await logout(a, high, low)

    run(scenario())


def test_sent_carbons_local_and_remote(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        # The sending client need not have carbons enabled itself (§7).
        a1, a2 = await login(server, alice, "one", carbons=False), await login(server, alice, "two")
        b = await login(server, bob, "b")
        message(a1, bob, "hello bob")
        assert (await b.next_message())["body"] == "hello bob"
        kind, inner = await next_carbon(a2)
        assert (kind, inner["body"], inner["from"].full, inner["to"].bare) == ("sent", "hello bob", f"{alice}/one", bob)
        message(a1, "someone@elsewhere.example", "to another domain")
        kind, inner = await next_carbon(a2)
        assert (kind, inner["to"].full) == ("sent", "someone@elsewhere.example")
        await settle(a1, b)
        assert a1.carbons.empty() and b.carbons.empty()
        await logout(a1, a2, b)

    run(scenario())


def test_private_no_copy_and_ineligible_messages_are_not_copied(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a1, a2 = await login(server, alice, "one"), await login(server, alice, "two")
        b1, b2 = await login(server, bob, "one"), await login(server, bob, "two")
        skipped = [
            ("chat", "private", f"<private xmlns='{CARBONS}'/>", f"<no-copy xmlns='{HINTS}'/>"),
            ("chat", "no-copy hint", f"<no-copy xmlns='{HINTS}'/>"),
            ("headline", "headline"),
            ("normal", None),  # normal without a body or an IM payload
            ("chat", "a forged carbon", f"<sent xmlns='{CARBONS}'/>"),
        ]
        for mtype, body, *extra in skipped:
            message(a1, f"{bob}/one", body, mtype, *extra)
        # What is copied: a chat state of type chat, a receipt of type normal, a plain chat.
        message(a1, f"{bob}/one", None, "chat", f"<composing xmlns='{CHATSTATES}'/>")
        message(a1, f"{bob}/one", None, "normal", f"<received xmlns='{RECEIPTS}' id='x1'/>")
        message(a1, f"{bob}/one", "plain")
        for client, kind in ((a2, "sent"), (b2, "received")):
            copies = [await next_carbon(client) for _ in range(3)]
            assert [k for k, _ in copies] == [kind] * 3
            inner = [c for _, c in copies]
            assert inner[0].xml.find(f"{{{CHATSTATES}}}composing") is not None
            assert inner[1].xml.find(f"{{{RECEIPTS}}}received") is not None
            assert inner[2]["body"] == "plain"
        await logout(a1, a2, b1, b2)

    run(scenario())


def test_disabled_resource_gets_no_carbons_and_nothing_loops(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a1, a2 = await login(server, alice, "one"), await login(server, alice, "two")
        b1, b2 = await login(server, bob, "one"), await login(server, bob, "two")
        await b2.plugin["xep_0280"].disable(timeout=5)
        # A conversation back and forth, every device carbons-enabled but b2: each copy once.
        for n in range(3):
            message(a1, f"{bob}/one", f"ping {n}")
            message(b1, f"{alice}/one", f"pong {n}")
        copies = [await next_carbon(a2) for _ in range(6)]
        # Each side's order is kept; how the two sides interleave is up to the network.
        assert [i["body"] for k, i in copies if k == "sent"] == [f"ping {n}" for n in range(3)]
        assert [i["body"] for k, i in copies if k == "received"] == [f"pong {n}" for n in range(3)]
        await settle(a1, a2, b1, b2)
        assert a2.carbons.empty() and a1.carbons.empty() and b1.carbons.empty() and b2.carbons.empty()
        # b2 enabled again: copies flow again.
        await b2.plugin["xep_0280"].enable(timeout=5)
        message(a1, f"{bob}/one", "again")
        assert (await next_carbon(b2))[1]["body"] == "again"
        await logout(a1, a2, b1, b2)

    run(scenario())
