"""XEP-0352 Client State Indication against a real server process.

Raw clients, so that the exact order of what reaches an inactive client is visible. Holding is
proven without sleeping: a sender's ping round trip means its stanzas have all been routed, and
what the inactive client then receives (one presence instead of ten, in a given order) shows
what was held.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import pytest
from lxml import etree

from tests.harness import ServerProcess
from tests.raw import RawClient
from tests.slix import Client, run

CLIENT = "jabber:client"
CSI = "urn:xmpp:csi:0"
PING = "urn:xmpp:ping"
CHATSTATES = "http://jabber.org/protocol/chatstates"
RECEIPTS = "urn:xmpp:receipts"
_numbers = itertools.count()


@pytest.fixture
def users(server: ServerProcess) -> Iterator[tuple[RawClient, str, RawClient, str]]:
    """alice (active) and bob's phone, both logged in and available, fresh accounts each time."""
    n = next(_numbers)
    alice, bob = server.add_user(f"csialice{n}"), server.add_user(f"csibob{n}")
    a, phone = RawClient(server).open(), RawClient(server).open()
    a.login(alice.split("@")[0], resource="a")
    phone.login(bob.split("@")[0], resource="phone")
    for client in (a, phone):
        client.presence()
        sync(client)
    yield a, alice, phone, bob
    a.close()
    phone.close()


def stanzas(data: bytes) -> list[etree._Element]:
    # Stanzas on the stream inherit jabber:client from the stream header, as here.
    return list(etree.fromstring(b"<r xmlns='jabber:client'>" + data + b"</r>"))


def sync(client: RawClient) -> list[etree._Element]:
    """A ping round trip; returns what arrived before the answer. (For an inactive client the
    answer is urgent: it flushes what was held.)"""
    tag = f"sync{next(_numbers)}"
    client.send(f"<iq type='get' id='{tag}'><ping xmlns='{PING}'/></iq>")
    data = client.read_until(f'id="{tag}"'.encode())
    data += client.read_until(b">")
    return stanzas(data)[:-1]


def read_stanzas_until(client: RawClient, marker: bytes) -> list[etree._Element]:
    return stanzas(client.read_until(marker) + client.read_until(b">"))


def status(el: etree._Element) -> str | None:
    return el.findtext(f"{{{CLIENT}}}status")


def summary(els: list[etree._Element]) -> list[tuple[str, str | None]]:
    """(kind, detail) per stanza: a presence's status, a message's body or first payload's name."""
    out = []
    for el in els:
        kind = etree.QName(el).localname
        if kind == "presence":
            out.append((kind, el.get("type") or status(el)))
        elif kind == "message":
            body = el.findtext(f"{{{CLIENT}}}body")
            out.append((kind, body if body is not None else etree.QName(el[0]).localname))
        else:
            out.append((kind, el.get("type")))
    return out


def directed_presences(a: RawClient, to: str, statuses: range) -> None:
    a.send("".join(f"<presence to='{to}'><status>{n}</status></presence>" for n in statuses))


def test_feature_advertised_and_inactive_client_still_gets_messages(server: ServerProcess) -> None:
    n = next(_numbers)
    alice, bob = server.add_user(f"csislixa{n}"), server.add_user(f"csislixb{n}")

    async def scenario() -> None:
        plugins = ("xep_0030", "xep_0199", "xep_0352")
        a, b = Client(server, alice, plugins=plugins), Client(server, f"{bob}/phone", plugins=plugins)
        await a.login()
        await b.login()
        assert b.plugin["xep_0352"].enabled  # the server offered <csi/> after authentication
        b.plugin["xep_0352"].send_inactive()
        a.send_message(mto=f"{bob}/phone", mbody="wake up", mtype="chat")
        assert (await b.next_message())["body"] == "wake up"
        b.plugin["xep_0352"].send_active()
        await b.plugin["xep_0199"].ping(timeout=5)
        await a.logout()
        await b.logout()

    run(scenario())


def test_presence_is_coalesced_and_everything_flushes_on_active(users) -> None:
    a, alice, phone, bob = users
    phone.send(f"<inactive xmlns='{CSI}'/>")
    sync(phone)
    directed_presences(a, f"{bob}/phone", range(5))
    a.send(f"<message to='{bob}/phone' type='chat'><composing xmlns='{CHATSTATES}'/></message>")
    directed_presences(a, f"{bob}/phone", range(5, 10))
    a.send(f"<message to='{bob}/phone' type='chat'><paused xmlns='{CHATSTATES}'/></message>")
    sync(a)  # all of alice's stanzas have been routed: held, or on their way to the phone
    phone.send(f"<active xmlns='{CSI}'/>")
    got = [s for s in sync(phone) if s.get("from", "").startswith(alice)]
    # The latest presence replaced the older ones and moved behind the first chat state.
    assert summary(got) == [("message", "composing"), ("presence", "9"), ("message", "paused")]
    # Active again: nothing is held any more.
    directed_presences(a, f"{bob}/phone", range(10, 12))
    got = read_stanzas_until(phone, b"<status>11</status>")
    assert [status(s) for s in got if etree.QName(s).localname == "presence"] == ["10", "11"]


def test_message_with_body_flushes_what_was_held_before_it(users) -> None:
    a, alice, phone, bob = users
    phone.send(f"<inactive xmlns='{CSI}'/>")
    sync(phone)
    directed_presences(a, f"{bob}/phone", range(3))
    a.send(f"<message to='{bob}/phone' type='chat'><composing xmlns='{CHATSTATES}'/></message>")
    a.send(f"<message to='{bob}/phone' type='normal'><received xmlns='{RECEIPTS}' id='m0'/></message>")
    a.send(f"<message to='{bob}/phone' type='chat'><body>hello</body></message>")
    got = read_stanzas_until(phone, b"</body>")
    got = [s for s in got if s.get("from", "").startswith(alice)]
    assert summary(got) == [("presence", "2"), ("message", "composing"), ("message", "received"),
                            ("message", "hello")]


def test_iq_and_subscription_request_are_not_held(users) -> None:
    a, alice, phone, bob = users
    phone.send(f"<inactive xmlns='{CSI}'/>")
    sync(phone)
    directed_presences(a, f"{bob}/phone", range(1))
    a.send(f"<iq type='get' id='p1' to='{bob}/phone'><ping xmlns='{PING}'/></iq>")
    got = stanzas(phone.read_until(PING.encode()) + phone.read_until(b"</iq>"))
    assert summary([s for s in got if s.get("from", "").startswith(alice)])[-2:] == [("presence", "0"), ("iq", "get")]
    phone.send(f"<iq type='result' id='p1' to='{alice}/a'/>")
    assert b'type="result"' in a.read_until(b'id="p1"')
    a.send(f"<presence to='{bob}' type='subscribe'/>")
    got = read_stanzas_until(phone, b'type="subscribe"')
    assert summary([s for s in got if s.get("from", "").startswith(alice)])[-1] == ("presence", "subscribe")


def test_held_stanzas_are_not_lost_when_the_session_ends(users, server: ServerProcess) -> None:
    a, alice, phone, bob = users
    desktop = RawClient(server).open()
    desktop.login(bob.split("@")[0], resource="desktop")
    desktop.presence()
    sync(desktop)
    phone.send(f"<inactive xmlns='{CSI}'/>")
    sync(phone)
    directed_presences(a, f"{bob}/phone", range(1))
    a.send(f"<message to='{bob}/phone' type='chat'><received xmlns='{RECEIPTS}' id='m1'/></message>")
    a.send(f"<message to='{bob}/phone' type='headline'><subject>news</subject></message>")
    sync(a)
    phone.close()  # the link just breaks: held messages go round again, to the desktop
    got = read_stanzas_until(desktop, b"</subject>")
    messages = [s for s in got if etree.QName(s).localname == "message"]
    assert [m.get("type") for m in messages] == ["chat", "headline"]
    assert messages[0].find(f"{{{RECEIPTS}}}received").get("id") == "m1"
    assert all(m.get("from") == f"{alice}/a" for m in messages)
    # The held presence was state, not a message: it is dropped, not rerouted.
    assert not [s for s in sync(desktop) if etree.QName(s).localname == "message"]
    desktop.close()


# ---- the buffer itself, without a server ---------------------------------------------------------

def _message(n: int, body: bool = False) -> etree._Element:
    xml = f"<message xmlns='{CLIENT}' from='alice@x/a' id='m{n}' type='chat'>"
    xml += "<body>hi</body>" if body else f"<composing xmlns='{CHATSTATES}'/>"
    return etree.fromstring(xml + "</message>")


def test_gate_flushes_when_full_and_keeps_what_the_outbox_cannot_take() -> None:
    from appliance.core.session import Session
    from appliance.features.csi import Held, gate_for
    from appliance.proto.jid import JID

    room = [100]
    pushed: list[etree._Element] = []

    def push(el: etree._Element) -> bool:
        if room[0] <= 0:
            return False
        room[0] -= 1
        pushed.append(el)
        return True

    async def push_wait(el: etree._Element) -> bool:
        return push(el)

    session = Session(JID.parse("bob@x/phone"), "test", push, lambda error: None, push_wait)
    held = Held(3)
    gate = gate_for(session, held)
    assert all(gate(_message(n)) for n in range(3)) and not pushed
    assert not gate(_message(3))  # full: the three held go out first, deliver pushes the fourth
    assert [m.get("id") for m in pushed] == ["m0", "m1", "m2"] and not len(held)
    assert all(gate(_message(n)) for n in range(4, 7))
    room[0] = 1
    assert not gate(_message(7, body=True))  # urgent, but the outbox takes only one of the held
    assert [m.get("id") for m in pushed[-1:]] == ["m4"]
    assert [m.get("id") for m in held.take()] == ["m5", "m6"]
