"""Limits and hostile input against the real server: each gets a protocol-correct error, and
afterwards normal clients still log in and exchange a message."""

from __future__ import annotations

import socket
import time
from typing import Iterator

import pytest

from tests.harness import ServerProcess
from tests.raw import RawClient, StreamClosed

LAUGHS = (b"<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>"
          b"<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]><message><body>&lol3;</body></message>")
EXTERNAL = b"<!DOCTYPE m [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><message><body>&x;</body></message>"


@pytest.fixture(scope="module")
def users(server: ServerProcess) -> tuple[str, str]:
    server.add_user("lim_alice")
    server.add_user("lim_bob")
    return "lim_alice", "lim_bob"


def still_works(server: ServerProcess, users: tuple[str, str]) -> None:
    """Two fresh clients log in and exchange a message in both directions."""
    a, b = RawClient(server).open(), RawClient(server).open()
    a_jid, b_jid = a.login(users[0], resource="check"), b.login(users[1], resource="check")
    a.send(f"<message to='{b_jid}' id='m1'><body>still here</body></message>")
    assert b"still here" in b.read_until(b"</message>")
    b.send(f"<message to='{a_jid}' id='m2'><body>me too</body></message>")
    assert b"me too" in a.read_until(b"</message>")
    a.close()
    b.close()


def stream_error(data: bytes) -> bytes:
    assert b"<stream:error" in data, data
    assert data.rstrip().endswith(b"</stream:stream>"), data
    return data


@pytest.fixture
def logged_in(server: ServerProcess, users: tuple[str, str]) -> Iterator[RawClient]:
    client = RawClient(server).open()
    client.login(users[0], resource="hostile")
    yield client
    client.close()
    still_works(server, users)


@pytest.mark.parametrize("payload, condition", [
    (LAUGHS, b"restricted-xml"),
    (EXTERNAL, b"restricted-xml"),
    (b"<message><body>&foo;</body></message>", b"restricted-xml"),
    (b"<!-- a comment -->", b"restricted-xml"),
    (b"<?php echo 1; ?>", b"restricted-xml"),
    (b"<message><body>\xff\xfe broken</body></message>", b"unsupported-encoding"),
    (b"<message><body>unclosed</message>", b"not-well-formed"),
    (b"<message>" + b"<a>" * 10_000, b"policy-violation"),
    (b"<x xmlns='urn:example'/>", b"unsupported-stanza-type"),
], ids=["billion-laughs", "external-entity", "entity-ref", "comment", "pi", "invalid-utf8",
        "malformed", "deep-nesting", "unknown-top-level"])
def test_hostile_input_after_login(logged_in: RawClient, payload: bytes, condition: bytes) -> None:
    logged_in.send(payload)
    assert condition in stream_error(logged_in.read_to_close())


@pytest.mark.parametrize("payload, condition", [
    (LAUGHS, b"restricted-xml"), (b"<!-- x -->", b"restricted-xml"), (b"\xc3\x28", b"unsupported-encoding"),
])
def test_hostile_input_before_login(server: ServerProcess, users: tuple[str, str],
                                    payload: bytes, condition: bytes) -> None:
    client = RawClient(server).connect()
    client.header()
    client.send(payload)
    assert condition in stream_error(client.read_to_close())
    still_works(server, users)


def test_doctype_instead_of_a_stream_header(server: ServerProcess, users: tuple[str, str]) -> None:
    client = RawClient(server).connect()
    client.send(b"<?xml version='1.0'?>" + LAUGHS.split(b"<message>")[0] + b"<stream:stream>")
    assert b"restricted-xml" in stream_error(client.read_to_close())
    still_works(server, users)


def test_ten_megabyte_stanza_is_refused_early(logged_in: RawClient, server: ServerProcess) -> None:
    logged_in.send(f"<message to='{server.domain}'><body>".encode())
    chunk = b"x" * 65536
    sent = 0
    with pytest.raises((BrokenPipeError, ConnectionResetError, OSError)):
        while sent < 10 * 1024 * 1024:
            logged_in.send(chunk)
            sent += len(chunk)
        raise OSError("the server took 10 MB without complaint")
    # The parser stops at about max_stanza_bytes (tests/test_xmlstream.py measures it); here the
    # kernel's socket buffers on both sides absorb a few MB more before the client notices.
    assert sent < 8 * 1024 * 1024
    assert server.logged("stanza larger than")


def test_big_stanza_gets_policy_violation(logged_in: RawClient) -> None:
    logged_in.send(b"<message><body>" + b"y" * 300_000 + b"</body></message>")
    assert b"policy-violation" in stream_error(logged_in.read_to_close())


@pytest.mark.parametrize("address", ["@nohost", "a@b@c", "x" * 1100 + "@appliance.test",
                                     "alice@appliance.test/" + "r" * 1100, "bad\u0000@appliance.test"
                                     .replace("\u0000", "\u0007")])
def test_malformed_jids_get_jid_malformed(logged_in: RawClient, address: str) -> None:
    from xml.sax.saxutils import quoteattr
    if "\u0007" in address:  # a control character cannot even appear in XML: not-well-formed
        logged_in.send(f"<message to={quoteattr(address)} id='j'><body>x</body></message>".encode())
        assert b"not-well-formed" in stream_error(logged_in.read_to_close())
        return
    logged_in.send(f"<message to={quoteattr(address)} id='j'><body>x</body></message>".encode())
    reply = logged_in.read_until(b"</message>")
    assert b"type=\"error\"" in reply and b"jid-malformed" in reply


def test_connections_per_address(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"limits.connections_per_address": 3}
    fresh_server.start()
    time.sleep(0.5)  # let the harness's own port probes finish closing: they count too
    held = [RawClient(fresh_server).connect() for _ in range(3)]
    for client in held:
        client.header()
    refused = RawClient(fresh_server).connect()
    assert b"policy-violation" in stream_error(refused.read_to_close())
    held[0].close()
    time.sleep(0.3)
    again = RawClient(fresh_server).connect()
    assert b"<stream:features" in again.header()  # a slot freed up


def test_slow_trickle_cannot_hold_a_slot(fresh_server: ServerProcess) -> None:
    """One byte every 0.2 s: the handshake timeout closes the connection anyway."""
    fresh_server.settings = {"limits.handshake_timeout": 1.5}
    fresh_server.start()
    client = RawClient(fresh_server).connect()
    header = (b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
              b"to='appliance.test' version='1.0'>")
    started = time.monotonic()
    with pytest.raises((BrokenPipeError, ConnectionResetError, StreamClosed, OSError)):
        for byte in header + b" " * 100:
            client.send(bytes([byte]))
            time.sleep(0.2)
        raise AssertionError("still connected after the whole trickle")
    assert time.monotonic() - started < 5


def test_handshake_timeout_sends_connection_timeout(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"limits.handshake_timeout": 1}
    fresh_server.start()
    client = RawClient(fresh_server).connect()
    client.header()
    assert b"connection-timeout" in stream_error(client.read_to_close(timeout=5))


def test_idle_timeout_after_login(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"limits.idle_timeout": 1}
    fresh_server.start()
    fresh_server.add_user("idler")
    client = RawClient(fresh_server).open()
    client.login("idler")
    assert b"connection-timeout" in stream_error(client.read_to_close(timeout=5))


def test_server_pings_a_silent_client_and_drops_a_dead_one(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"keepalive.ping_interval": 1, "keepalive.ping_timeout": 1}
    fresh_server.start()
    fresh_server.add_user("pinged")
    alive = RawClient(fresh_server).open()
    jid = alive.login("pinged", resource="alive")
    dead = RawClient(fresh_server).open()
    dead.login("pinged", resource="dead")
    for _ in range(3):  # the live client answers every ping and stays connected
        ping = alive.read_until(b"</iq>", timeout=5)
        assert b"urn:xmpp:ping" in ping and f"to=\"{jid}\"".encode() in ping
        ping_id = ping.split(b'id="', 1)[1].split(b'"', 1)[0].decode()
        alive.send(f"<iq type='result' id='{ping_id}' to='{fresh_server.domain}'/>")
    assert b"urn:xmpp:ping" in dead.read_until(b"</iq>", timeout=5)  # never answered
    assert b"connection-timeout" in stream_error(dead.read_to_close(timeout=5))
    alive.send(f"<iq type='get' id='p' to='{fresh_server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b"type=\"result\"" in alive.read_until(b"id=\"p\"/>", timeout=5)


def test_sigterm_closes_streams_and_database(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    fresh_server.add_user("leaver")
    client = RawClient(fresh_server).open()
    client.login("leaver")
    assert fresh_server.stop() == 0
    assert b"system-shutdown" in stream_error(client.read_to_close())
    assert "database closed cleanly" in fresh_server.log_text()
    assert not (fresh_server.data / "appliance.sqlite3-wal").exists()


def test_log_names_users_but_not_passwords_or_bodies(server: ServerProcess, users: tuple[str, str]) -> None:
    still_works(server, users)
    text = server.log_text()
    assert "authenticated as lim_alice" in text
    assert "correct horse battery" not in text
    info_lines = [line for line in text.splitlines() if " DEBUG " not in line]
    assert not any("still here" in line for line in info_lines)


def _unused(sock: socket.socket) -> None:  # keeps the socket import honest for type checkers
    del sock
