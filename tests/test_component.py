"""XEP-0114 external components: the handshake, one connection per component, and stanzas routed
both ways between a slixmpp ComponentXMPP and slixmpp clients; a raw socket for the refusals."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from typing import Iterator

import pytest

from tests.app_server import APP, SECRET, AppServer, component_server
from tests.harness import ServerProcess
from tests.slix import Client, run

NS_STREAM = "http://etherx.jabber.org/streams"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = component_server(tmp_path_factory.mktemp("component"))
    yield proc
    proc.stop()


def raw_component(server: ServerProcess, secret: str, domain: str = APP) -> tuple[socket.socket, bytes]:
    """Open a component stream and send the handshake for `secret`; returns what came back to the close."""
    sock = socket.create_connection(("127.0.0.1", server.component_port), timeout=10)  # type: ignore[attr-defined]
    sock.sendall(f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='{NS_STREAM}' to='{domain}'>".encode())
    data = b""
    while b"id='" not in data or not data.rstrip().endswith(b">"):
        data += sock.recv(4096)
    stream_id = re.search(rb"id='([^']+)'", data).group(1).decode()  # type: ignore[union-attr]
    sock.sendall(f"<handshake>{hashlib.sha1((stream_id + secret).encode()).hexdigest()}</handshake>".encode())
    return sock, data


def read_all(sock: socket.socket, until: bytes = b"</stream:stream>") -> bytes:
    data = b""
    while until not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_wrong_secret_is_not_authorized(server: ServerProcess) -> None:
    sock, _ = raw_component(server, "not the secret")
    answer = read_all(sock)
    sock.close()
    assert b"<not-authorized" in answer and b"<handshake/>" not in answer


def test_unknown_component_domain_is_refused(server: ServerProcess) -> None:
    # The error may come with the stream header, before any handshake could be sent: read it all.
    sock = socket.create_connection(("127.0.0.1", server.component_port), timeout=10)  # type: ignore[attr-defined]
    sock.sendall(f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='{NS_STREAM}' "
                 "to='other.appliance.test'>".encode())
    answer = read_all(sock)
    sock.close()
    assert b"<host-unknown" in answer


def test_a_new_connection_replaces_the_old_one_and_no_to_is_refused(server: ServerProcess) -> None:
    # An app server restarted after a crash must not wait until the server notices its dead link.
    old, _ = raw_component(server, SECRET)
    assert b"<handshake" in read_all(old, until=b"/>")
    new, _ = raw_component(server, SECRET)
    assert b"<handshake" in read_all(new, until=b"/>")
    assert b"<conflict" in read_all(old)
    old.close()
    new.sendall(f"<message from='bot@{APP}'><body>to nobody</body></message>".encode())
    assert b"<improper-addressing" in read_all(new)  # a stanza without 'to' ends the stream
    new.close()


def test_routing_both_ways_and_from_checked(server: ServerProcess) -> None:
    user = server.add_user("comp_user")

    async def scenario() -> None:
        app = await AppServer(server).start()
        client = Client(server, f"{user}/desk")
        await client.login()
        client.send_message(mto=f"device@{APP}", mbody="to the component", mtype="chat")
        got = await asyncio.wait_for(app.messages.get(), 10)
        assert got["body"] == "to the component" and got["from"].full == f"{user}/desk"
        app.send_message(mto=user, mfrom=f"bot@{APP}", mbody="from the component", mtype="chat")
        back = await client.next_message()
        assert back["body"] == "from the component" and back["from"].full == f"bot@{APP}"
        app.send_message(mto=user, mfrom="someone@elsewhere.test", mbody="forged", mtype="chat")
        await asyncio.wait_for(app.gone.wait(), 10)
        assert [e["condition"] for e in app.stream_errors] == ["invalid-from"]
        # Gone: a request to it bounces with an error of type wait, and the client is answered.
        with pytest.raises(Exception) as failed:
            await client.plugin["xep_0030"].get_info(jid=APP, timeout=10)
        assert "remote-server-timeout" in str(failed.value.iq["error"]["condition"])  # type: ignore[attr-defined]
        await client.logout()

    run(scenario())


def test_a_component_leaving_while_stanzas_are_written_to_it_costs_only_its_connection(
        server: ServerProcess) -> None:
    # Its reader answers the component's </stream:stream> while the writer is still writing what
    # was routed to it: both on one socket (once, in CI, this took the whole server down).
    user = server.add_user("comp_burst")

    async def scenario() -> None:
        client = Client(server, f"{user}/desk")
        await client.login()
        for round_ in range(5):
            sock, _ = raw_component(server, SECRET)
            assert b"<handshake" in read_all(sock, until=b"/>")
            for n in range(300):
                client.send_message(mto=f"device@{APP}", mbody=f"{round_} {n} " + "x" * 200, mtype="chat")
            await asyncio.sleep(0.05)
            sock.sendall(b"</stream:stream>")
            sock.close()
        await asyncio.sleep(0.5)
        assert server.proc is not None and server.proc.poll() is None, "the server died"
        app = await AppServer(server).start()  # and components still connect
        app.disconnect()
        client.disconnect()

    run(scenario())


def test_a_component_closed_for_breaking_a_rule_bounces_what_comes_while_it_is_told(
        server: ServerProcess) -> None:
    """The server ends a component's stream (invalid-from) while its closing words cannot be
    written yet (the component does not read; its socket is full): a request routed to the
    component meanwhile is answered with an error at once, not swallowed by the dying link."""
    user = server.add_user("comp_dying")

    async def scenario() -> None:
        client = Client(server, f"{user}/desk")
        await client.login()
        sock, _ = raw_component(server, SECRET)
        assert b"<handshake" in read_all(sock, until=b"/>")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills sooner; never read again
        # More than the kernel buffers of both ends hold (4 MB here), fewer stanzas than the
        # outbox does (a full outbox bounces too, and would hide what this test is about).
        for n in range(400):
            client.send_message(mto=f"device@{APP}", mbody=f"{n} " + "x" * 20_000, mtype="chat")
        await asyncio.sleep(1.0)
        sock.sendall(f"<message from='someone@elsewhere.test' to='{user}'><body>forged</body></message>".encode())
        await asyncio.sleep(0.5)  # the server has ended the link and is trying to say so
        started = asyncio.get_running_loop().time()
        with pytest.raises(Exception) as failed:
            await client.plugin["xep_0030"].get_info(jid=APP, timeout=4)
        assert "remote-server-timeout" in str(failed.value.iq["error"]["condition"])  # type: ignore[attr-defined]
        assert asyncio.get_running_loop().time() - started < 3
        sock.close()
        await client.logout()

    run(scenario())
