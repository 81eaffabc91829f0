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


def test_a_roster_bigger_than_the_outbox_does_not_look_like_a_slow_reader(fresh_server: ServerProcess) -> None:
    """The answers to one's own initial presence (one per online contact) are a burst the client
    caused itself: they wait for room in its outbox instead of closing it as too slow."""
    from appliance.store import roster
    from appliance.store.db import Database
    contacts = 12
    fresh_server.settings = {"limits.outbox_stanzas": 5}
    fresh_server.start()
    hub = fresh_server.add_user("hub")
    names = [fresh_server.add_user(f"c{i}").split("@")[0] for i in range(contacts)]
    with Database.open(fresh_server.data / "appliance.sqlite3") as db:
        for name in names:
            db.write_sync(roster.set_item, "hub", roster.RosterItem(f"{name}@{fresh_server.domain}", subscription="both"))
            db.write_sync(roster.set_item, name, roster.RosterItem(hub, subscription="both"))
    online = []
    for name in names:
        client = RawClient(fresh_server).open()
        client.login(name)
        client.send("<presence/>")
        _ping_server(client, fresh_server, f"p-{name}")
        online.append(client)
    me = RawClient(fresh_server).open()
    me.login("hub")
    me.send("<presence/>")
    me.send(f"<iq type='get' id='after' to='{fresh_server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = me.read_until(b'id="after"').decode()  # still connected: every answer came before this
    assert all(f'from="{name}@{fresh_server.domain}/raw"' in got for name in names), got
    assert not fresh_server.logged("not reading (outbox full)", timeout=0.5)
    for client in online + [me]:
        client.close()
