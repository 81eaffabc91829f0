"""IQ and message routing by target (RFC 6120 §10, RFC 6121 §8), with raw clients."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.harness import ServerProcess
from tests.raw import RawClient


@pytest.fixture(scope="module")
def pair(server: ServerProcess) -> Iterator[tuple[RawClient, str, RawClient, str]]:
    server.add_user("route_a")
    server.add_user("route_b")
    a, b = RawClient(server).open(), RawClient(server).open()
    a_jid, b_jid = a.login("route_a", resource="one"), b.login("route_b", resource="two")
    yield a, a_jid, b, b_jid
    a.close()
    b.close()


def test_iq_to_a_full_jid_is_forwarded_and_the_answer_comes_back(pair) -> None:
    a, a_jid, b, b_jid = pair
    a.send(f"<iq type='get' id='q1' to='{b_jid}'><query xmlns='jabber:iq:version'/></iq>")
    request = b.read_until(b"</iq>")
    assert f'from="{a_jid}"'.encode() in request and b"jabber:iq:version" in request
    b.send(f"<iq type='result' id='q1' to='{a_jid}'><query xmlns='jabber:iq:version'><name>raw</name></query></iq>")
    answer = a.read_until(b"</iq>")
    assert b"<name>raw</name>" in answer and f'from="{b_jid}"'.encode() in answer


def test_iq_to_a_missing_resource_is_service_unavailable(pair, server: ServerProcess) -> None:
    a, *_ = pair
    a.send(f"<iq type='get' id='q2' to='route_b@{server.domain}/nobody'><query xmlns='jabber:iq:version'/></iq>")
    reply = a.read_until(b"</iq>")
    assert b'type="error"' in reply and b"service-unavailable" in reply and b'id="q2"' in reply


def test_unhandled_iq_to_the_server_is_service_unavailable(pair, server: ServerProcess) -> None:
    a, *_ = pair
    a.send(f"<iq type='get' id='q3' to='{server.domain}'><query xmlns='urn:example:unknown'/></iq>")
    reply = a.read_until(b"</iq>")
    assert b"service-unavailable" in reply and b'id="q3"' in reply


def test_unhandled_iq_to_another_account_is_service_unavailable(pair) -> None:
    a, _, _, b_jid = pair
    bare = b_jid.split("/")[0]
    a.send(f"<iq type='get' id='q4' to='{bare}'><query xmlns='urn:example:unknown'/></iq>")
    assert b"service-unavailable" in a.read_until(b"</iq>")


def test_server_software_version(pair, server: ServerProcess) -> None:
    a, *_ = pair
    a.send(f"<iq type='get' id='v' to='{server.domain}'><query xmlns='jabber:iq:version'/></iq>")
    reply = a.read_until(b"</iq>")
    assert b'type="result"' in reply and b"<name>XMPP appliance</name>" in reply


def test_message_to_unknown_local_user_bounces(pair, server: ServerProcess) -> None:
    a, *_ = pair
    a.send(f"<message to='ghost@{server.domain}' id='g' type='chat'><body>hello?</body></message>")
    reply = a.read_until(b"</message>")
    assert b'type="error"' in reply and b"service-unavailable" in reply


def test_message_to_another_domain_is_remote_server_not_found(pair) -> None:
    a, *_ = pair
    a.send("<message to='someone@elsewhere.example' id='r' type='chat'><body>hi</body></message>")
    reply = a.read_until(b"</message>")
    assert b"remote-server-not-found" in reply


def test_errors_are_never_answered_with_errors(pair, server: ServerProcess) -> None:
    a, *_ = pair
    a.send(f"<message to='ghost@{server.domain}' type='error' id='e'><error type='cancel'>"
           "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    a.send(f"<iq type='get' id='after' to='{server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = a.read_until(b"</iq>", b'id="after"/>')
    assert b'id="e"' not in reply and b'id="after"' in reply
