"""The timers of a bound connection, which its reader keeps (appliance/net/c2s.py): XEP-0198 ack
requests after `request_seconds`, XEP-0199 pings and the idle timeout, over TLS and in plaintext.
(tests/test_limits.py and tests/test_sm.py cover pings, the idle timeout and dead links too.)"""

from __future__ import annotations

import time

import pytest
from lxml import etree

from tests.harness import ServerProcess
from tests.raw import RawClient

SM = "urn:xmpp:sm:3"
REQUEST = f"<r xmlns='{SM}'/>".encode()


def stream_error(data: bytes) -> bytes:
    assert b"<stream:error" in data and data.rstrip().endswith(b"</stream:stream>"), data
    return data


def plaintext_login(server: ServerProcess, name: str) -> RawClient:
    client = RawClient(server).connect()
    client.header()
    client.login(name)
    return client


def test_unacknowledged_stanzas_get_an_ack_request_after_request_seconds(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"stream_management.request_seconds": 1, "stream_management.request_after": 100}
    fresh_server.start()
    sender, phone = fresh_server.add_user("acksender"), fresh_server.add_user("ackphone")
    a = RawClient(fresh_server).open()
    a.login("acksender")
    b = RawClient(fresh_server).open()
    b.login("ackphone", resource="phone")
    b.send(f"<enable xmlns='{SM}'/>")
    b.read_until(b"<enabled")
    b.read_until(b"/>")
    with pytest.raises(TimeoutError):  # nothing unacknowledged: nothing to ask
        b.read_until(REQUEST, timeout=2.5)

    a.send(f"<message to='{phone}/phone' type='chat'><body>one</body></message>")
    b.read_until(b"</message>")
    sent = time.monotonic()
    b.read_until(REQUEST, timeout=5)
    assert time.monotonic() - sent < 2.5  # within one request_seconds period (plus scheduling)
    with pytest.raises(TimeoutError):  # one request is out: not asked again
        b.read_until(REQUEST, timeout=2.5)

    b.send(f"<a xmlns='{SM}' h='1'/>")
    a.send(f"<message to='{phone}/phone' type='chat'><body>two</body></message>")
    b.read_until(b"</message>")
    b.read_until(REQUEST, timeout=5)  # answered, and a new stanza waits: asked again
    b.send(f"<a xmlns='{SM}' h='2'/>")
    a.send(f"<iq type='get' id='p' to='{fresh_server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b'type="result"' in a.read_until(b'id="p"/>')  # the sender's stream is unaffected
    assert sender.startswith("acksender@")
    a.close()
    b.close()


def test_ping_and_idle_timeout_in_plaintext(fresh_server: ServerProcess) -> None:
    """The same timers when the reader reads the socket itself (no TLS layer in between)."""
    fresh_server.settings = {"require_tls": False, "keepalive.ping_interval": 1, "keepalive.ping_timeout": 1,
                             "limits.idle_timeout": 30}
    fresh_server.start()
    fresh_server.add_user("plainping")
    client = plaintext_login(fresh_server, "plainping")
    for _ in range(2):  # answered pings keep the stream up
        ping = client.read_until(b"</iq>", timeout=5)
        ping_id = ping.split(b'id="', 1)[1].split(b'"', 1)[0].decode()
        client.send(f"<iq type='result' id='{ping_id}' to='{fresh_server.domain}'/>")
    assert b"urn:xmpp:ping" in client.read_until(b"</iq>", timeout=5)  # this one goes unanswered
    started = time.monotonic()
    assert b"connection-timeout" in stream_error(client.read_to_close(timeout=5))
    assert time.monotonic() - started < 2.5
    assert fresh_server.logged("no answer to ping")


def test_idle_timeout_in_plaintext(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"require_tls": False, "limits.idle_timeout": 1}
    fresh_server.start()
    fresh_server.add_user("plainidle")
    client = plaintext_login(fresh_server, "plainidle")
    assert b"connection-timeout" in stream_error(client.read_to_close(timeout=5))


# ---- releasing the XML parser of a silent client ------------------------------------------------

# The server with the release after 1 s of silence instead of 30 (a module constant, not a setting).
_LAUNCH = ("import sys, appliance.net.c2s as c2s; c2s.PARSER_IDLE_SECONDS = 1.0; c2s.TRIM_DELAY = 0.2; "
           "from appliance.cli import main; raise SystemExit(main(sys.argv[1:]))")


def releases_after(server: ServerProcess, count: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while server.log_text().count("XML parser released") <= count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


HEADER_WITH_PREFIX = ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                      "xmlns:x='urn:example:x' to='{domain}' version='1.0'>")


def test_a_silent_client_gets_its_parser_released_and_rebuilt_transparently(fresh_server: ServerProcess) -> None:
    fresh_server.python_args = ["-c", _LAUNCH]
    server = fresh_server.start()
    server.add_user("silent")
    client = RawClient(server).open()
    client.authenticate("silent")
    client.send(HEADER_WITH_PREFIX.format(domain=server.domain))  # x: declared on the header only
    client.read_until(b"</stream:features>")
    client.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                "<resource>r</resource></bind></iq>")
    jid = client.read_until(b"</iq>").split(b"<jid>", 1)[1].split(b"</jid>", 1)[0].decode()
    assert releases_after(server, 0)
    for round_ in range(2):
        released = server.log_text().count("XML parser released")
        client.send(f"<message to='{jid}' id='m{round_}'><x:data x:n='{round_}'><x:leaf/></x:data></message>")
        echo = client.read_until(b"</message>")
        parsed = etree.fromstring(b"<r xmlns='jabber:client'>" + echo[echo.index(b"<message"):] + b"</r>")[0]
        data = parsed.find("{urn:example:x}data")
        assert data is not None and data.get("{urn:example:x}n") == str(round_), echo
        assert data[0].tag == "{urn:example:x}leaf"
        assert releases_after(server, released)  # silent again: released again
    client.send("<message><y:undeclared/></message>")  # the rebuilt parser still checks prefixes
    assert b"bad-namespace-prefix" in stream_error(client.read_to_close(timeout=5))


# ---- a write that fails ---------------------------------------------------------------------------

# The server with socket writes that fail once, for the first write that carries FAIL-ONCE.
_FAILING_WRITE = "\n".join([
    "import sys, trio, appliance.net.transport as transport",
    "original, original_now, failed = transport.Transport.send_all, transport.Transport.send_now, []",
    "def fail_once(data):",
    "    if b'FAIL-ONCE' in bytes(data) and not failed:",
    "        failed.append(1)",
    "        raise trio.BrokenResourceError('a write failed (test)')",
    "async def send_all(self, data):",
    "    fail_once(data)",
    "    await original(self, data)",
    "def send_now(self, data):",
    "    fail_once(data)",
    "    return original_now(self, data)",
    "transport.Transport.send_all, transport.Transport.send_now = send_all, send_now",
    "from appliance.cli import main",
    "raise SystemExit(main(sys.argv[1:]))",
])


def test_a_failed_write_ends_the_connection_and_the_session_hibernates(fresh_server: ServerProcess) -> None:
    """A connection is written from other tasks (the sender's reader, or a writer task), not its
    own reader: a failed write must still end it as a lost link (hibernation, nothing lost), not
    go unnoticed or take the sender's connection down."""
    fresh_server.python_args = ["-c", _FAILING_WRITE]
    server = fresh_server.start()
    server.add_user("writer")
    phone = server.add_user("writephone")
    a = RawClient(server).open()
    a.login("writer")
    b = RawClient(server).open()
    b.login("writephone", resource="phone")
    b.send(f"<enable xmlns='{SM}' resume='true'/>")
    previd = b.read_until(b"/>").split(b"id='", 1)[1].split(b"'", 1)[0].decode()
    a.send(f"<message to='{phone}/phone' type='chat' id='f1'><body>FAIL-ONCE</body></message>")
    assert server.logged("connection lost (BrokenResourceError)", timeout=5)
    assert server.logged("link lost; session kept", timeout=5)
    again = RawClient(server).open()
    again.authenticate("writephone")
    again.header()
    again.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    assert b"<resumed" in again.read_until(b"/>")
    assert b"FAIL-ONCE" in again.read_until(b"</message>")  # sent again after the failed write
    a.send(f"<iq type='get' id='p' to='{server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b'type="result"' in a.read_until(b'id="p"/>')  # the rest of the server carries on
    assert "internal error" not in server.log_text()
