"""Encrypted chat (appliance/client/secure.py) through the real server: two library clients
exchange messages both ways (one while the receiver is offline), the contact paired through an
invite carrying the inviter's key sees it verified, and afterwards nothing the server keeps (its
SQLite files, WAL included, and its log) contains a plaintext while the archive holds the messages."""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from copy import deepcopy
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

import nacl.public
import pytest
import trio

from appliance.client import e2e
from appliance.client.e2e import KeyChanged
from appliance.client.keys import KeyStore
from appliance.client.invite import pair_with_keys
from appliance.client.secure import Incoming, SecureClient
from appliance.client.state import ClientState
from appliance.client.stream import connect
from tests.harness import ServerProcess
from tests.test_client_pairing import invite
from appliance.proto import ns
from appliance.proto.stanza import Element, make, serialize
from tests.test_client_stream import account, chat, next_message


class Device:
    """A SecureClient with what it received recorded, run in a cancel scope of its own."""

    def __init__(self, server: ServerProcess, data: Path) -> None:
        self.server, self.data = server, data
        self.received: list[Incoming] = []
        self.read = 0
        self.key_changes: list[tuple[str, list[int]]] = []
        self.client: SecureClient | None = None
        self._scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery) -> SecureClient:
        self.client = SecureClient(ClientState(self.data), on_message=self.received.append,
                                   on_key_change=lambda jid, ids: self.key_changes.append((jid, ids)),
                                   cafile=str(self.server.cert))
        self._scope = trio.CancelScope()
        nursery.start_soon(self._run, self._scope, self.client)
        with trio.fail_after(15):
            await self.client.wait_online()
        return self.client

    @staticmethod
    async def _run(scope: trio.CancelScope, client: SecureClient) -> None:
        with scope:
            await client.run()
        client.state.close()

    async def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await trio.sleep(0.2)

    async def next(self, timeout: float = 10) -> Incoming:
        """The first message not returned by next() before."""
        with trio.fail_after(timeout):
            while len(self.received) <= self.read:
                await trio.sleep(0.05)
        self.read += 1
        return self.received[self.read - 1]


def marker() -> str:
    return f"plaintext-{secrets.token_hex(16)}"


@pytest.fixture
def own_server(tmp_path: Path) -> Any:
    proc = ServerProcess(tmp_path / "server", settings={"allow_registration": True}).start()
    yield proc
    if proc.proc is not None:
        proc.stop()


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def test_encrypted_chat_both_ways_leaves_no_plaintext_on_the_server(
        own_server: ServerProcess, tmp_path: Path, nursery: trio.Nursery) -> None:
    server = own_server
    anna_jid = server.add_user("anna")
    ClientState(tmp_path / "anna").save_account(account(server, "anna"))
    anna_device = Device(server, tmp_path / "anna")
    anna = await anna_device.start(nursery)

    uri = await anna.contact_invite()         # from the server, with anna's key fingerprint
    assert f"e2e-sid-{anna.device.device_id}=" in uri
    bob_account = await pair_with_keys(uri, ClientState(tmp_path / "bob"), host=server.host,
                                       port=server.port, username="bob", timeout=10)
    bob_device = Device(server, tmp_path / "bob")
    bob = await bob_device.start(nursery)

    texts = [marker() for _ in range(3)]
    await anna.send(bob_account.jid, texts[0])
    got = await bob_device.next()
    assert (got.peer, got.body, got.encrypted, got.problem) == (anna_jid, texts[0], True, None)
    assert got.trust == "verified"            # the invite carried anna's fingerprint

    await bob.send(anna_jid, texts[1])
    got = await anna_device.next()
    assert (got.peer, got.body, got.encrypted, got.trust, got.problem) == \
        (bob_account.jid, texts[1], True, "tofu", None)

    await bob_device.stop()                   # offline: the server stores the ciphertext
    await anna.send(bob_account.jid, texts[2])
    await trio.sleep(0.5)
    bob_device = Device(server, tmp_path / "bob")
    await bob_device.start(nursery)
    got = await bob_device.next()
    assert (got.body, got.encrypted, got.trust, got.problem) == (texts[2], True, "verified", None)

    assert [m.body for m in anna.state.history(bob_account.jid)] == texts  # the user's own copy
    await anna_device.stop()
    await bob_device.stop()
    server.stop()
    _assert_server_has_no_plaintext(server, texts)


def _assert_server_has_no_plaintext(server: ServerProcess, texts: list[str]) -> None:
    """Every file the stopped server left (database, WAL, log, ...) is free of the plaintexts."""
    files = [p for p in server.data.rglob("*") if p.is_file()]
    assert server.log_path in files
    for path in files:
        data = path.read_bytes()
        for text in texts:
            assert text.encode() not in data, f"{text} found in {path}"
    [database] = server.data.rglob("appliance.sqlite3")
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT count(*) FROM archive").fetchone()[0]
    assert rows >= 2 * len(texts)             # each message in the sender's and the receiver's archive


async def contacts(server: ServerProcess, tmp_path: Path, nursery: trio.Nursery) -> tuple[Device, Device, str]:
    """anna (an existing account) and bob (paired through anna's contact invite), both online."""
    server.add_user("anna")
    ClientState(tmp_path / "anna").save_account(account(server, "anna"))
    anna = Device(server, tmp_path / "anna")
    await anna.start(nursery)
    bob = await pair_with_keys(invite(server, "--contact", "anna"), ClientState(tmp_path / "bob"),
                               host=server.host, port=server.port, username="bob", timeout=10)
    bob_device = Device(server, tmp_path / "bob")
    await bob_device.start(nursery)
    return anna, bob_device, bob.jid


def sealed(sender: SecureClient, to: str, body: str, stanza_id: str) -> Element:
    """A message from `sender`'s device as SecureClient.send would make it."""
    encrypted = e2e.encrypt(body, sender=sender.device, recipients=sender.keys.devices_of(to),
                            from_jid=sender.jid, to_jid=to, now=time.time())
    return e2e.build_message(encrypted, to=to, id_=stanza_id)


def flip_payload_byte(message: Element) -> None:
    payload = message.find(f"{{{e2e.NS}}}encrypted/{{{e2e.NS}}}payload")
    data = bytearray(base64.b64decode(payload.text))
    data[30] ^= 0x01
    payload.text = base64.b64encode(bytes(data)).decode()


async def test_tampered_and_replayed_messages_are_reported_not_shown(
        own_server: ServerProcess, tmp_path: Path, nursery: trio.Nursery) -> None:
    anna_device, bob, bob_jid = await contacts(own_server, tmp_path, nursery)
    anna = anna_device.client
    assert anna is not None
    await anna.send(bob_jid, "hello")          # anna now knows bob's keys
    assert (await bob.next()).body == "hello"

    # another session of anna's account sends copies
    raw = await connect(replace(account(own_server, "anna"), resource="raw"), cafile=str(own_server.cert))
    secret = marker()
    tampered = sealed(anna, bob_jid, secret, "t1")
    flip_payload_byte(tampered)
    await raw.send(tampered)
    got = await bob.next()
    assert (got.problem, got.encrypted, got.trust) == ("tampered", True, None)
    assert secret not in got.body

    good = sealed(anna, bob_jid, "the real one", "g1")
    await raw.send(deepcopy(good))
    assert ((await bob.next()).body, bob.received[-1].problem) == ("the real one", None)
    good.set("id", "g2")                       # same ciphertext, a new stanza id
    await raw.send(good)
    got = await bob.next()
    assert (got.problem, got.encrypted) == ("replayed", True) and "the real one" not in got.body

    await anna.send(bob_jid, "still fine")
    assert ((await bob.next()).body, bob.received[-1].problem) == ("still fine", None)
    await raw.aclose()


async def test_a_replaced_device_key_is_loud_until_accepted(
        own_server: ServerProcess, tmp_path: Path, nursery: trio.Nursery) -> None:
    anna, bob, bob_jid = await contacts(own_server, tmp_path, nursery)
    assert anna.client is not None and bob.client is not None
    anna_jid, device_id = anna.client.jid, anna.client.device.device_id
    await anna.client.send(bob_jid, "before")
    assert (await bob.next()).body == "before"
    await anna.stop()

    # the same account and device id with another key (a reinstalled device, or an attacker's)
    state = ClientState(tmp_path / "anna2")
    state.save_account(account(own_server, "anna"))
    KeyStore(state.conn)
    with state.conn:
        state.conn.execute("INSERT INTO e2e_own_device VALUES (1, ?, ?, ?)",
                           (device_id, bytes(nacl.public.PrivateKey.generate()), time.time()))
    state.close()
    anna2 = Device(own_server, tmp_path / "anna2")
    await anna2.start(nursery)
    assert anna2.client is not None
    await anna2.client.send(bob_jid, "after")
    got = await bob.next()
    assert (got.problem, got.encrypted) == ("key-changed", True) and "after" not in got.body
    assert bob.key_changes == [(anna_jid, [device_id])]
    with pytest.raises(KeyChanged):
        await bob.client.send(anna_jid, "refused")

    bob.client.accept_key_change(anna_jid, device_id)
    await bob.client.send(anna_jid, "accepted")
    got = await anna2.next()
    assert (got.body, got.problem) == ("accepted", None)


async def test_other_clients_get_the_fallback_and_plain_messages_stay_plain(
        own_server: ServerProcess, tmp_path: Path, nursery: trio.Nursery) -> None:
    anna, bob, bob_jid = await contacts(own_server, tmp_path, nursery)
    assert anna.client is not None
    await bob.stop()                     # bob's account on a client without the encryption
    plain = await connect(account(own_server, "bob", bob_password(tmp_path)), cafile=str(own_server.cert))
    await plain.send(make("presence"))
    secret = marker()
    await anna.client.send(bob_jid, secret)
    got = await next_message(plain)
    while got.find(f"{{{ns.CLIENT}}}body") is None:   # e.g. a PEP event
        got = await next_message(plain)
    assert got.findtext(f"{{{ns.CLIENT}}}body") == e2e.FALLBACK_BODY
    assert secret.encode() not in serialize(got)

    await plain.send(chat(anna.client.jid, "no encryption here"))
    got_plain = await anna.next()
    assert (got_plain.body, got_plain.encrypted, got_plain.trust, got_plain.problem) == \
        ("no encryption here", False, None, None)
    await plain.aclose()


def bob_password(tmp_path: Path) -> str:
    state = ClientState(tmp_path / "bob")
    stored = state.load_account()
    state.close()
    assert stored is not None
    return stored.password


async def test_a_second_device_is_learned_from_pep_events_and_both_decrypt(
        own_server: ServerProcess, tmp_path: Path, nursery: trio.Nursery) -> None:
    anna, bob, bob_jid = await contacts(own_server, tmp_path, nursery)
    assert anna.client is not None
    await anna.client.send(bob_jid, "one")
    assert (await bob.next()).body == "one"

    state = ClientState(tmp_path / "bob2")      # bob's laptop: the same account, another resource
    state.save_account(replace(account(own_server, "bob", bob_password(tmp_path)), resource="laptop"))
    state.close()
    laptop = Device(own_server, tmp_path / "bob2")
    await laptop.start(nursery)
    assert laptop.client is not None
    # anna fetched bob's list once; the laptop reaches her only as a +notify event (caps)
    await until(lambda: len(anna.client.keys.devices_of(bob_jid)) == 2)

    await anna.client.send(bob_jid, "two")
    for device in (bob, laptop):
        got = await device.next()
        assert (got.body, got.problem) == ("two", None)
    await laptop.client.send(anna.client.jid, "from the laptop")
    assert (await anna.next()).body == "from the laptop"


async def until(condition: Any, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.05)


async def test_an_existing_account_adds_a_contact_from_an_invite_with_verified_keys(
        own_server: ServerProcess, tmp_path: Path, nursery: trio.Nursery) -> None:
    anna, bob, bob_jid = await contacts(own_server, tmp_path, nursery)
    assert anna.client is not None
    carl_jid = own_server.add_user("carl")
    ClientState(tmp_path / "carl").save_account(account(own_server, "carl"))
    carl = Device(own_server, tmp_path / "carl")
    await carl.start(nursery)
    assert carl.client is not None

    await carl.client.add_contact(await anna.client.contact_invite())
    await until(lambda: any(c.jid == anna.client.jid and c.subscription == "both"
                            for c in carl.client.contacts()))
    await carl.client.send(anna.client.jid, "hello anna")
    got = await anna.next()
    assert (got.peer, got.body, got.trust) == (carl_jid, "hello anna", "tofu")
    assert [trust for _, _, trust in carl.client.devices(anna.client.jid)] == ["verified"]
    await anna.client.send(carl_jid, "hello carl")
    got = await carl.next()
    assert (got.body, got.trust) == ("hello carl", "verified")


async def test_a_message_sent_from_one_device_shows_on_the_others_through_carbons(
        own_server: ServerProcess, tmp_path: Path, nursery: trio.Nursery) -> None:
    anna, bob, bob_jid = await contacts(own_server, tmp_path, nursery)
    assert anna.client is not None
    state = ClientState(tmp_path / "tablet")
    state.save_account(replace(account(own_server, "anna"), resource="tablet"))
    state.close()
    tablet = Device(own_server, tmp_path / "tablet")
    await tablet.start(nursery)
    assert tablet.client is not None
    await until(lambda: len(anna.client.keys.devices_of(anna.client.jid)) == 2)  # own +notify event

    secret = marker()
    await anna.client.send(bob_jid, secret)
    assert (await bob.next()).body == secret
    await until(lambda: [(m.direction, m.body) for m in tablet.client.state.history(bob_jid)] == [("out", secret)])
    assert tablet.received == []
