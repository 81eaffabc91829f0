"""The device's keys, the trust store and the replay guard (appliance/client/keys.py) in the real
client database (ClientState), and the trust rules as e2e.encrypt/decrypt enforce them."""

from __future__ import annotations

import stat

import pytest

from appliance.client import e2e
from appliance.client.e2e import DeviceKey
from appliance.client.e2e_devices import parse_invite_params, with_invite_params
from appliance.client.keys import EXPECTED, FingerprintMismatch, KeyStore, ReplayGuard
from appliance.client.state import ClientState
from appliance.pairing.invites import CONTACT, invite_uri, new_invite, parse_uri

NOW = 1_800_000_000.0
DAY = 86400.0
ANNA, BOB = "anna@chat.local", "bob@chat.local"


@pytest.fixture
def state(tmp_path):
    state = ClientState(tmp_path / "bob")
    yield state
    state.close()


def message_from(sender: DeviceKey, to_keys: dict[int, bytes], text: str = "hi") -> e2e.Element:
    """Anna's message to Bob as Bob's client receives it."""
    encrypted = e2e.encrypt(text, sender=sender, recipients={d: e2e.PeerKey(k) for d, k in to_keys.items()},
                            from_jid=ANNA, to_jid=BOB, now=NOW)
    message = e2e.build_message(encrypted, to=BOB, id_="x")
    message.set("from", f"{ANNA}/phone")
    return message


def bob_reads(state: ClientState, message) -> e2e.Decrypted:
    keys = KeyStore(state.conn)
    return e2e.decrypt(message, my_device=keys.own_device(), sender_devices=keys.devices_of(ANNA),
                       my_jid=BOB, replay_guard=ReplayGuard(state.conn), now=NOW)


def test_own_device_is_made_once_and_kept_owner_only(tmp_path, state):
    device = KeyStore(state.conn).own_device()
    assert 0 < device.device_id < 2**31
    state.close()
    again = ClientState(tmp_path / "bob")
    kept = KeyStore(again.conn).own_device()
    assert (kept.device_id, kept.public_key) == (device.device_id, device.public_key)
    assert stat.S_IMODE((tmp_path / "bob" / "client.sqlite").stat().st_mode) == 0o600
    again.close()


def test_first_use_is_trusted_and_reported_new(state):
    keys, anna = KeyStore(state.conn), DeviceKey.generate()
    changes = keys.remember(ANNA, {anna.device_id: anna.public_key})
    assert changes.new == [anna.device_id] and not changes.changed
    assert keys.trust_of(ANNA, anna.device_id) == e2e.TOFU
    assert keys.remember(ANNA, {anna.device_id: anna.public_key}).new == []   # seen again: nothing new
    bob_device = keys.own_device()
    got = bob_reads(state, message_from(anna, {bob_device.device_id: bob_device.public_key}))
    assert (got.body, got.trust) == ("hi", e2e.TOFU)


def test_a_key_change_blocks_until_accepted(state):
    keys, anna_old, anna_new = KeyStore(state.conn), DeviceKey.generate(), DeviceKey.generate()
    device_id = anna_old.device_id
    anna_new = DeviceKey(device_id, anna_new.private_key)          # same device id, another key
    bob = keys.own_device()
    keys.remember(ANNA, {device_id: anna_old.public_key})
    changes = keys.remember(ANNA, {device_id: anna_new.public_key})
    assert changes.changed == [device_id]
    assert keys.trust_of(ANNA, device_id) == e2e.CHANGED
    # The old key is still the accepted one.
    assert keys.devices_of(ANNA)[device_id].public_key == anna_old.public_key
    message = message_from(anna_new, {bob.device_id: bob.public_key})
    for _ in range(2):   # stays loud: asking again does not make it go away
        with pytest.raises(e2e.KeyChanged, match="anna@chat.local"):
            bob_reads(state, message)
    with pytest.raises(e2e.KeyChanged):
        e2e.encrypt("reply", sender=bob, recipients=keys.devices_of(ANNA), from_jid=BOB, to_jid=ANNA, now=NOW)
    # Re-publishing the same new key does not accept it either.
    assert keys.remember(ANNA, {device_id: anna_new.public_key}).changed == []
    assert keys.trust_of(ANNA, device_id) == e2e.CHANGED
    keys.accept_change(ANNA, device_id)
    assert keys.trust_of(ANNA, device_id) == e2e.TOFU
    assert bob_reads(state, message).body == "hi"
    e2e.encrypt("reply", sender=bob, recipients=keys.devices_of(ANNA), from_jid=BOB, to_jid=ANNA, now=NOW)
    with pytest.raises(ValueError, match="no changed key"):
        keys.accept_change(ANNA, device_id)


def test_invite_fingerprint_makes_the_contact_verified_without_tofu(state):
    anna = DeviceKey.generate()
    uri = with_invite_params(invite_uri(new_invite(CONTACT, inviter="anna", now=NOW), "chat.local", None),
                             {anna.device_id: anna.public_key})
    keys = KeyStore(state.conn)
    for device_id, fingerprint in parse_invite_params(parse_uri(uri).params).items():
        assert keys.verify(ANNA, device_id, fingerprint) == EXPECTED
    assert keys.devices_of(ANNA) == {}                       # no key yet: nothing to encrypt to
    changes = keys.remember(ANNA, {anna.device_id: anna.public_key})
    assert changes.new == [anna.device_id]
    assert keys.trust_of(ANNA, anna.device_id) == e2e.VERIFIED
    bob = keys.own_device()
    assert bob_reads(state, message_from(anna, {bob.device_id: bob.public_key})).trust == e2e.VERIFIED


def test_a_published_key_that_contradicts_the_invite_is_a_change(state):
    anna, impostor = DeviceKey.generate(), DeviceKey.generate()
    keys = KeyStore(state.conn)
    keys.verify(ANNA, anna.device_id, e2e.fingerprint(anna.public_key))      # grouped form works too
    changes = keys.remember(ANNA, {anna.device_id: impostor.public_key})
    assert changes.changed == [anna.device_id] and changes.new == []
    assert keys.trust_of(ANNA, anna.device_id) == e2e.CHANGED
    with pytest.raises(e2e.KeyChanged):
        e2e.encrypt("x", sender=keys.own_device(), recipients=keys.devices_of(ANNA),
                    from_jid=BOB, to_jid=ANNA, now=NOW)


def test_verify_by_hand(state):
    keys, anna, anna_new = KeyStore(state.conn), DeviceKey.generate(), DeviceKey.generate()
    keys.remember(ANNA, {anna.device_id: anna.public_key})
    assert keys.verify(ANNA, anna.device_id, e2e.fingerprint_hex(anna.public_key).upper()) == e2e.VERIFIED
    with pytest.raises(FingerprintMismatch):
        keys.verify(ANNA, anna.device_id, e2e.fingerprint_hex(anna_new.public_key))
    assert keys.trust_of(ANNA, anna.device_id) == e2e.VERIFIED
    # Verifying the new key of a changed device accepts it.
    keys.remember(ANNA, {anna.device_id: anna_new.public_key})
    assert keys.verify(ANNA, anna.device_id, e2e.fingerprint_hex(anna_new.public_key)) == e2e.VERIFIED
    peer = keys.devices_of(ANNA)[anna.device_id]
    assert (peer.public_key, peer.pending_key, peer.trust) == (anna_new.public_key, None, e2e.VERIFIED)
    with pytest.raises(ValueError, match="not a SHA-256"):
        keys.verify(ANNA, anna.device_id, "abc")
    # Vouching for the old key while a change is pending discards the other key...
    impostor = DeviceKey.generate()
    assert keys.remember(ANNA, {anna.device_id: impostor.public_key}).changed == [anna.device_id]
    keys.verify(ANNA, anna.device_id, e2e.fingerprint(anna_new.public_key))
    peer = keys.devices_of(ANNA)[anna.device_id]
    assert (peer.public_key, peer.pending_key, peer.trust) == (anna_new.public_key, None, e2e.VERIFIED)
    # ...and it is flagged again as soon as it is published again.
    assert keys.remember(ANNA, {anna.device_id: impostor.public_key}).changed == [anna.device_id]


def test_a_device_left_out_of_the_list_gets_no_more_messages(state):
    keys, phone, laptop = KeyStore(state.conn), DeviceKey.generate(), DeviceKey.generate()
    keys.remember(ANNA, {phone.device_id: phone.public_key, laptop.device_id: laptop.public_key})
    changes = keys.remember(ANNA, {phone.device_id: phone.public_key})
    assert changes.removed == [laptop.device_id]
    assert keys.devices_of(ANNA)[laptop.device_id].active is False
    encrypted = e2e.encrypt("x", sender=keys.own_device(), recipients=keys.devices_of(ANNA),
                            from_jid=BOB, to_jid=ANNA, now=NOW)
    assert [k.get("rid") for k in encrypted.iter(f"{{{e2e.NS}}}key")] == [str(phone.device_id)]
    back = keys.remember(ANNA, {phone.device_id: phone.public_key, laptop.device_id: laptop.public_key})
    assert back.new == [] and back.changed == []
    assert keys.devices_of(ANNA)[laptop.device_id].active is True


def test_replay_guard_survives_a_restart(tmp_path, state):
    ReplayGuard(state.conn).admit(ANNA, 5, "m1", int(NOW), NOW)
    state.close()
    again = ClientState(tmp_path / "bob")
    with pytest.raises(e2e.Replayed, match="received before"):
        ReplayGuard(again.conn).admit(ANNA, 5, "m1", int(NOW), NOW + 60)
    ReplayGuard(again.conn).admit(ANNA, 6, "m1", int(NOW), NOW + 60)    # another device's id space
    again.close()


def test_replay_window_bounds_what_is_kept(state):
    guard = ReplayGuard(state.conn, window=30 * DAY, future=DAY)
    with pytest.raises(e2e.Replayed, match="before the replay window"):
        guard.admit(ANNA, 5, "old", int(NOW - 31 * DAY), NOW)
    with pytest.raises(e2e.Replayed, match="in the future"):
        guard.admit(ANNA, 5, "ahead", int(NOW + 2 * DAY), NOW)
    guard.admit(ANNA, 5, "m1", int(NOW), NOW)
    guard.admit(ANNA, 5, "m2", int(NOW + 40 * DAY), NOW + 40 * DAY)        # prunes m1
    assert state.conn.execute("SELECT message_id FROM e2e_seen").fetchall() == [("m2",)]
    with pytest.raises(e2e.Replayed, match="before the replay window"):   # m1 again: still refused
        guard.admit(ANNA, 5, "m1", int(NOW), NOW + 40 * DAY)


def test_replay_guard_caps_its_size_and_raises_its_floor(state):
    guard = ReplayGuard(state.conn, max_entries=3)
    for n in range(5):
        guard.admit(ANNA, 5, f"m{n}", int(NOW) + n, NOW + 10)
    assert state.conn.execute("SELECT count(*) FROM e2e_seen").fetchone()[0] == 3
    for n in range(5):   # forgotten or remembered, none gets through twice
        with pytest.raises(e2e.Replayed):
            guard.admit(ANNA, 5, f"m{n}", int(NOW) + n, NOW + 10)
    guard.admit(ANNA, 5, "m5", int(NOW) + 5, NOW + 10)
