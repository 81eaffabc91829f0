"""What the server accepted is not lost: not to SIGKILL, not to a client that stops reading."""

from __future__ import annotations

import signal
import socket
import time

from tests.harness import ServerProcess
from tests.raw import RawClient, StreamClosed


def _ping_server(client: RawClient, server: ServerProcess, ping_id: str) -> None:
    """Stanzas of one session are routed in order, so this answer means the ones before it are done."""
    client.send(f"<iq type='get' id='{ping_id}' to='{server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    client.read_until(f'id="{ping_id}"'.encode())


def test_offline_message_survives_sigkill(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    fresh_server.add_user("crash_sender")
    recipient = fresh_server.add_user("crash_recipient")
    sender = RawClient(fresh_server).open()
    sender.login("crash_sender")
    sender.send(f"<message to='{recipient}' type='chat' id='c1'><body>survive the crash</body></message>")
    _ping_server(sender, fresh_server, "after-message")
    assert fresh_server.stop(signal.SIGKILL) == -signal.SIGKILL

    fresh_server.start()  # same data directory and ports
    client = RawClient(fresh_server).open()
    client.login("crash_recipient")
    client.send("<presence/>")
    message = client.read_until(b"</message>")
    assert b"survive the crash" in message
    assert b"urn:xmpp:delay" in message


def _slow_socket_client(server: ServerProcess) -> RawClient:
    """A client whose receive buffer is tiny, so the server's writes back up quickly."""
    client = RawClient(server)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    client.sock = sock
    return client


def test_reader_too_slow_is_disconnected_and_nothing_vanishes(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"limits.outbox_stanzas": 5}
    fresh_server.start()
    fresh_server.add_user("fast")
    fresh_server.add_user("slow")
    slow = _slow_socket_client(fresh_server)
    slow.header()
    slow.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    slow.read_until(b"/>")
    slow._wrap()
    slow.header()
    slow_jid = slow.login("slow", resource="sleepy")
    slow.send("<presence/>")
    time.sleep(0.2)

    fast = RawClient(fresh_server).open()
    fast.login("fast")
    body = "z" * 8000
    sent = 800  # 6.4 MB: more than the kernel buffers of both sockets can hold
    for n in range(sent):
        fast.send(f"<message to='{slow_jid}' type='chat' id='m{n}'><body>{n}:{body}</body></message>")
    _ping_server(fast, fresh_server, "done-sending")
    assert b"type=\"error\"" not in fast.buffer  # nothing bounced: all were delivered or stored

    # What reached the slow client before the server gave up on it. The stream error itself
    # cannot reach a client that does not read; the server closes the connection after a grace time.
    received = _drain(slow)
    got = {int(part.split(b":", 1)[0]) for part in received.split(b"<body>")[1:]}
    assert len(got) < sent
    again = RawClient(fresh_server).open()
    again.login("slow", resource="awake")
    again.send("<presence/>")
    while len(got) < sent:  # the rest comes from offline storage, in order, each once or more
        message = again.read_until(b"</message>", timeout=10)
        got.add(int(message.split(b"<body>", 1)[1].split(b":", 1)[0]))
    assert got == set(range(sent))
    assert "not reading (outbox full)" in fresh_server.log_text()


def _drain(client: RawClient) -> bytes:
    try:
        return client.read_to_close(timeout=15)
    except StreamClosed:
        return client.buffer
