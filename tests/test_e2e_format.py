"""The end-to-end encryption format (appliance/client/e2e.py, e2e_devices.py; docs/e2e.md).

Sans-I/O code, so no server: messages are built, serialised and parsed back the way they would
cross a stream (the server in between is played by the tests that alter the XML)."""

from __future__ import annotations

import base64
import hashlib
import sqlite3

import pytest
from lxml import etree

from appliance.client import e2e
from appliance.client.e2e import DeviceKey, PeerKey
from appliance.client.e2e_devices import (DEVICES_NODE, BadDeviceList, device_list_item, fetch_request,
                                          parse_device_list, parse_invite_params, publish_request,
                                          with_invite_params)
from appliance.client.keys import ReplayGuard
from appliance.pairing.invites import CONTACT, invite_uri, new_invite, parse_uri
from appliance.proto.stanza import serialize

NOW = 1_800_000_000.0
ANNA, BOB = "anna@chat.local", "bob@chat.local"
SECRET = "the safe code is 4711, tell nobody"


class Devices:
    """Anna's phone (the sender) and laptop, Bob's phone and tablet."""

    def __init__(self) -> None:
        self.anna_phone, self.anna_laptop = DeviceKey.generate(), DeviceKey.generate()
        self.bob_phone, self.bob_tablet = DeviceKey.generate(), DeviceKey.generate()

    def anna(self) -> dict[int, PeerKey]:
        return {d.device_id: PeerKey(d.public_key) for d in (self.anna_phone, self.anna_laptop)}

    def bob(self) -> dict[int, PeerKey]:
        return {d.device_id: PeerKey(d.public_key) for d in (self.bob_phone, self.bob_tablet)}


@pytest.fixture
def devices() -> Devices:
    return Devices()


@pytest.fixture
def guard(tmp_path) -> ReplayGuard:
    return ReplayGuard(sqlite3.connect(tmp_path / "client.sqlite"))


def wire(message: etree._Element, *, from_: str = f"{ANNA}/phone") -> etree._Element:
    """The message as the receiver gets it: stamped with the sender's full JID by the server,
    serialised and parsed again."""
    message.set("from", from_)
    return etree.fromstring(serialize(message))


def sent(devices: Devices, text: str = SECRET, *, recipients=None, own=None, to_jid: str = BOB):
    encrypted = e2e.encrypt(text, sender=devices.anna_phone,
                            recipients=devices.bob() if recipients is None else recipients,
                            own_devices=devices.anna() if own is None else own,
                            from_jid=f"{ANNA}/phone", to_jid=to_jid, now=NOW)
    return wire(e2e.build_message(encrypted, to=BOB, id_="m1"))


def open_as(device: DeviceKey, message, guard, *, senders: dict[int, PeerKey], my_jid: str = BOB):
    return e2e.decrypt(message, my_device=device, sender_devices=senders,
                       my_jid=my_jid, replay_guard=guard, now=NOW + 5)


def test_one_recipient_device_round_trip(devices, guard):
    only_phone = {devices.bob_phone.device_id: PeerKey(devices.bob_phone.public_key)}
    message = sent(devices, recipients=only_phone, own={})
    got = open_as(devices.bob_phone, message, guard, senders=devices.anna())
    assert got.body == SECRET
    assert (got.sender_jid, got.sender_device, got.stamp) == (ANNA, devices.anna_phone.device_id, int(NOW))
    assert len(got.message_id) == 32
    keys = message.findall(f"{{{e2e.NS}}}encrypted/{{{e2e.NS}}}key")
    assert [k.get("rid") for k in keys] == [str(devices.bob_phone.device_id)]


def test_every_device_of_both_accounts_can_read_it_but_not_the_sender_itself(devices, tmp_path):
    message = sent(devices)
    for n, reader in enumerate((devices.bob_phone, devices.bob_tablet)):
        got = open_as(reader, message, ReplayGuard(sqlite3.connect(tmp_path / f"{n}.sqlite")),
                      senders=devices.anna())
        assert got.body == SECRET
    # Anna's laptop reads the copy it gets (a carbon) as its own account's message.
    got = open_as(devices.anna_laptop, message, ReplayGuard(sqlite3.connect(tmp_path / "l.sqlite")),
                  my_jid=ANNA, senders=devices.anna())
    assert got.body == SECRET
    rids = {k.get("rid") for k in message.iter(f"{{{e2e.NS}}}key")}
    assert rids == {str(d.device_id) for d in (devices.bob_phone, devices.bob_tablet, devices.anna_laptop)}
    with pytest.raises(e2e.NotForThisDevice):
        open_as(devices.anna_phone, message, ReplayGuard(sqlite3.connect(":memory:")),
                my_jid=ANNA, senders=devices.anna())


def test_the_server_sees_only_the_fallback_body(devices):
    message = sent(devices)
    xml = serialize(message).decode()
    assert SECRET not in xml and "4711" not in xml
    assert message.findtext("{jabber:client}body") == e2e.FALLBACK_BODY
    eme = message.find(f"{{{e2e.EME_NS}}}encryption")
    assert (eme.get("namespace"), eme.get("name")) == (e2e.NS, e2e.EME_NAME)
    assert message.find("{urn:xmpp:hints}store") is not None
    assert message.get("type") == "chat"


def test_lengths_are_padded_so_the_ciphertext_hides_the_exact_length(devices, guard):
    payloads = [base64.b64decode(sent(devices, text).findtext(f"{{{e2e.NS}}}encrypted/{{{e2e.NS}}}payload"))
                for text in ("a", "ab", "a" * 40)]
    assert len({len(p) for p in payloads}) == 1
    assert (len(payloads[0]) - 24 - 16) % e2e.PAD_TO == 0      # nonce and MAC around the content


def flip_bit(message, path: str, byte: int) -> None:
    """Change one bit of the decoded bytes of the element at `path` (byte < 24: the nonce)."""
    element = message.find(path)
    data = bytearray(base64.b64decode(element.text))
    data[byte] ^= 0x01
    element.text = base64.b64encode(bytes(data)).decode()


@pytest.mark.parametrize("part, byte", [("payload", 30), ("payload", 3), ("payload", -1),
                                        ("key", 40), ("key", 5), ("key", -1)])
def test_a_flipped_bit_is_tampering(devices, guard, part, byte):
    message = sent(devices, recipients={devices.bob_phone.device_id: PeerKey(devices.bob_phone.public_key)},
                   own={})
    flip_bit(message, f"{{{e2e.NS}}}encrypted/{{{e2e.NS}}}{part}", byte)
    with pytest.raises(e2e.Tampered):
        open_as(devices.bob_phone, message, guard, senders=devices.anna())


def test_the_same_message_twice_is_a_replay(devices, guard):
    message = sent(devices)
    assert open_as(devices.bob_phone, message, guard, senders=devices.anna()).body == SECRET
    with pytest.raises(e2e.Replayed, match="received before"):
        open_as(devices.bob_phone, wire(message), guard, senders=devices.anna())
    # Another message from the same device is not.
    assert open_as(devices.bob_phone, sent(devices), guard, senders=devices.anna()).body == SECRET


def test_a_failed_check_does_not_use_up_the_message_id(devices, guard):
    message = sent(devices)
    with pytest.raises(e2e.UnknownDevice):
        open_as(devices.bob_phone, message, guard, senders={1: PeerKey(devices.bob_tablet.public_key)})
    assert open_as(devices.bob_phone, message, guard, senders=devices.anna()).body == SECRET


def test_the_server_cannot_reroute_or_readdress(devices, guard):
    to_carl = sent(devices, to_jid="carl@chat.local")        # outer to: bob, inner to: carl
    with pytest.raises(e2e.Tampered, match="carl@chat.local"):
        open_as(devices.bob_phone, to_carl, guard, senders=devices.anna())
    from_mallory = wire(sent(devices), from_="mallory@chat.local/x")
    with pytest.raises(e2e.Tampered, match="mallory"):
        open_as(devices.bob_phone, from_mallory, guard, senders=devices.anna())
    not_mine = sent(devices)
    with pytest.raises(e2e.Tampered, match="not for dora"):
        open_as(devices.bob_phone, not_mine, guard, my_jid="dora@chat.local", senders=devices.anna())


def test_the_sender_device_must_be_known_and_must_match_the_key(devices, guard):
    message = sent(devices)
    with pytest.raises(e2e.UnknownDevice) as unknown:
        open_as(devices.bob_phone, message, guard, senders={})
    assert (unknown.value.jid, unknown.value.device_id) == (ANNA, devices.anna_phone.device_id)
    # The envelope names Anna's laptop as the sender: its key does not open the phone's box.
    message.find(f"{{{e2e.NS}}}encrypted").set("sid", str(devices.anna_laptop.device_id))
    with pytest.raises(e2e.Tampered, match="does not open"):
        open_as(devices.bob_phone, message, guard, senders=devices.anna())
    message.find(f"{{{e2e.NS}}}encrypted").set("sid", "not-a-number")
    with pytest.raises(e2e.Tampered, match="bad device id"):
        open_as(devices.bob_phone, message, guard, senders=devices.anna())


def test_payload_moved_from_another_message_is_tampering(devices, guard):
    first, second = sent(devices), sent(devices, "another")
    payload = f"{{{e2e.NS}}}encrypted/{{{e2e.NS}}}payload"
    first.find(payload).text = second.find(payload).text
    with pytest.raises(e2e.Tampered, match="payload"):
        open_as(devices.bob_phone, first, guard, senders=devices.anna())


def test_a_changed_key_stops_both_directions(devices, guard):
    changed = {d: PeerKey(k.public_key, e2e.CHANGED, pending_key=b"\x01" * 32)
               for d, k in devices.anna().items()}
    with pytest.raises(e2e.KeyChanged) as caught:
        open_as(devices.bob_phone, sent(devices), guard, senders=changed)
    assert caught.value.jid == ANNA and devices.anna_phone.device_id in caught.value.device_ids
    bob_changed = {**devices.bob(), 7: PeerKey(b"\x02" * 32, e2e.CHANGED, pending_key=b"\x03" * 32)}
    with pytest.raises(e2e.KeyChanged, match="bob@chat.local"):
        sent(devices, recipients=bob_changed)


def test_inactive_devices_get_no_key_and_no_device_is_an_error(devices):
    bob = devices.bob()
    # Gone from Bob's list (with a key change nobody accepted: it gets nothing, so it blocks nothing).
    bob[devices.bob_tablet.device_id] = PeerKey(devices.bob_tablet.public_key, e2e.CHANGED,
                                                pending_key=bytes(32), active=False)
    rids = {k.get("rid") for k in sent(devices, recipients=bob, own={}).iter(f"{{{e2e.NS}}}key")}
    assert rids == {str(devices.bob_phone.device_id)}
    with pytest.raises(e2e.UnknownDevice, match="no device"):
        sent(devices, recipients={})


def test_fingerprint_is_sha256_in_groups():
    key = bytes(range(32))
    digest = hashlib.sha256(key).hexdigest()
    assert e2e.fingerprint_hex(key) == digest
    assert e2e.fingerprint(key) == " ".join(digest[i:i + 8] for i in range(0, 64, 8))
    # The test vector in docs/e2e.md.
    assert e2e.fingerprint(key) == "630dcd29 66c43366 91125448 bbb25b4f f412a49c 732db2c8 abc1b858 1bd710dd"


def test_device_list_round_trip_through_publish_and_event(devices):
    keys = {d.device_id: d.public_key for d in (devices.anna_phone, devices.anna_laptop)}
    iq = etree.fromstring(serialize(publish_request(keys, "p1")))
    item = iq.find(".//{http://jabber.org/protocol/pubsub}item")
    assert iq.find(".//{http://jabber.org/protocol/pubsub}publish").get("node") == DEVICES_NODE
    assert item.get("id") == "current"
    assert parse_device_list(item) == keys
    assert "presence" in [v.text for v in iq.iter("{jabber:x:data}value")]
    # A +notify event carries the same item in the pubsub#event namespace.
    event_item = etree.Element("{http://jabber.org/protocol/pubsub#event}item", id="current")
    event_item.extend(list(device_list_item(keys)))
    assert parse_device_list(etree.fromstring(serialize(event_item))) == keys
    fetch = fetch_request(ANNA, "f1")
    assert fetch.find(".//{http://jabber.org/protocol/pubsub}items").get("node") == DEVICES_NODE


@pytest.mark.parametrize("device_xml", [
    "<device id='0' key='{k}'/>", "<device id='x' key='{k}'/>", "<device id='2147483648' key='{k}'/>",
    "<device id='5' key='AAAA'/>", "<device id='5' key='not base64!'/>",
    "<device id='5' key='{k}'/><device id='5' key='{k}'/>",
])
def test_a_bad_device_list_is_refused_whole(device_xml):
    key = base64.b64encode(bytes(32)).decode()
    item = etree.fromstring(f"<item xmlns='http://jabber.org/protocol/pubsub' id='current'>"
                            f"<devices xmlns='{e2e.NS}'>{device_xml.format(k=key)}</devices></item>")
    with pytest.raises(BadDeviceList):
        parse_device_list(item)


def test_invite_carries_fingerprints_that_parse_back(devices):
    invite = new_invite(CONTACT, inviter="anna", now=NOW)
    uri = invite_uri(invite, "chat.local", "ab" * 32)
    keys = {d.device_id: d.public_key for d in (devices.anna_phone, devices.anna_laptop)}
    extended = with_invite_params(uri, keys)
    parsed = parse_uri(extended)
    assert parsed.token == invite.token and parsed.fingerprint == "ab" * 32
    assert parse_invite_params(parsed.params) == {d: e2e.fingerprint_hex(k) for d, k in keys.items()}
    assert parse_invite_params(parse_uri(uri).params) == {}
    with pytest.raises(BadDeviceList):
        parse_invite_params({"e2e-sid-12": "abc"})
    with pytest.raises(BadDeviceList):
        parse_invite_params({"e2e-sid-x": "ab" * 32})
