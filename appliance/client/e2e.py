"""The appliance's end-to-end encryption format, "Appliance NaCl" (docs/e2e.md is the spec).

Sans-I/O: pure functions and small classes, elements in, elements out. Each device has a Curve25519
key pair; a message gets a fresh 32-byte message key that seals the content (JSON with the body, both
bare JIDs, the sender device, a random id and a timestamp) with `nacl.secret.SecretBox`, and the
message key is sealed for every receiving device with `nacl.public.Box` (crypto_box: the sender
device's private key and the receiving device's public key). The server only ever sees ciphertext.

Every check on receipt fails with a typed `E2EError` (Tampered, Replayed, UnknownDevice, KeyChanged,
NotForThisDevice): a message that cannot be shown is reported, never silently dropped. Device lists
and invite fingerprints are in e2e_devices.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import nacl.exceptions
import nacl.public
import nacl.secret
import nacl.utils
from lxml import etree

from appliance.proto import ns
from appliance.proto.jid import JID, InvalidJID
from appliance.proto.stanza import Element, make, sub

NS = "urn:appliance:e2e:0"
EME_NS = "urn:xmpp:eme:0"                      # XEP-0380: names the encryption for other clients
EME_NAME = "Appliance NaCl"
VERSION = 0                                    # the inner JSON's "v"
MAX_DEVICE_ID = 2**31 - 1                      # device ids are 1 .. 2^31-1, like OMEMO's
KEY_BYTES = 32
PAD_TO = 64                                    # the sealed content's length is a multiple of this
FALLBACK_BODY = ("[This message is end-to-end encrypted (Appliance NaCl). "
                 "Your client cannot show it: open it in the appliance's client.]")
VERIFIED, TOFU, CHANGED = "verified", "tofu", "changed"   # PeerKey.trust


class E2EError(Exception):
    """A message that cannot be encrypted or shown; str() says why, for the user."""


class Tampered(E2EError):
    """The ciphertext, its keys or its addressing were changed, or the element is malformed."""


class Replayed(E2EError):
    """This message was accepted before (or is too old to tell)."""


class UnknownDevice(E2EError):
    """A device (or account) whose key this device does not know: fetch its device list first."""

    def __init__(self, jid: str, device_id: int | None, message: str) -> None:
        super().__init__(message)
        self.jid, self.device_id = jid, device_id


class KeyChanged(E2EError):
    """A device of `jid` shows a key other than the accepted one; nothing goes through until the
    user accepts (KeyStore.accept_change) or verifies the new key."""

    def __init__(self, jid: str, device_ids: list[int]) -> None:
        ids = ", ".join(str(d) for d in device_ids)
        super().__init__(f"the encryption key of {jid} (device {ids}) has changed: "
                         "compare fingerprints, then accept the new key")
        self.jid, self.device_ids = jid, device_ids


class NotForThisDevice(E2EError):
    """The sender did not encrypt the message for this device (it did not know its key yet)."""


@dataclass(frozen=True)
class PeerKey:
    """What this device knows about another device: its accepted key and how far it is trusted."""
    public_key: bytes                  # the accepted key (32 bytes)
    trust: str = TOFU                  # VERIFIED, TOFU or CHANGED (then pending_key is set)
    pending_key: bytes | None = None   # a different key seen since, not accepted yet
    active: bool = True                # in the account's latest published device list


@dataclass(frozen=True)
class DeviceKey:
    """This device's identity: its id and its private key."""
    device_id: int
    private_key: nacl.public.PrivateKey

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(secrets.randbelow(MAX_DEVICE_ID) + 1, nacl.public.PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        return bytes(self.private_key.public_key)


@dataclass(frozen=True)
class Decrypted:
    body: str
    sender_jid: str        # bare
    sender_device: int
    message_id: str
    stamp: int             # the sender's clock, unix seconds
    trust: str             # the sender device's: VERIFIED or TOFU (show which)


class ReplayGuard(Protocol):
    def admit(self, jid: str, device_id: int, message_id: str, stamp: int, now: float) -> None:
        """Record the message as seen; raise Replayed if it was seen before or is outside the window."""


def fingerprint_hex(public_key: bytes) -> str:
    """SHA-256 of the 32-byte public key, lowercase hex (how invites carry it)."""
    return hashlib.sha256(public_key).hexdigest()


def fingerprint(public_key: bytes) -> str:
    """The fingerprint as people compare it: 8 groups of 8 hex digits."""
    digest = fingerprint_hex(public_key)
    return " ".join(digest[i:i + 8] for i in range(0, 64, 8))


def bare(jid: str) -> str:
    """The normalised bare JID (InvalidJID, a ValueError, if it is not one)."""
    return str(JID.parse(jid).bare)


def _envelope_bare(jid: str | None) -> str:
    """A received message's address, bare; Tampered if absent or invalid."""
    try:
        return bare(jid or "")
    except InvalidJID as exc:
        raise Tampered(f"bad address {jid!r}: {exc}") from None


def encrypt(plaintext: str, *, sender: DeviceKey, recipients: Mapping[int, PeerKey],
            own_devices: Mapping[int, PeerKey] | None = None, from_jid: str, to_jid: str,
            now: float) -> Element:
    """The `<encrypted>` element carrying `plaintext` to every active device of `to_jid`
    (`recipients`) and the sender's other active devices (`own_devices`). Raises KeyChanged if any
    of them has an unaccepted key change, UnknownDevice if the recipient has no device."""
    from_bare, to_bare = bare(from_jid), bare(to_jid)
    theirs = {d: k for d, k in recipients.items() if k.active}
    own = {d: k for d, k in (own_devices or {}).items() if k.active and d != sender.device_id}
    _refuse_changed(to_bare, theirs)
    _refuse_changed(from_bare, own)
    if not theirs:
        raise UnknownDevice(to_bare, None, f"{to_bare} has no device with a known key")
    message_key = nacl.utils.random(KEY_BYTES)
    inner = {"v": VERSION, "from": from_bare, "to": to_bare, "sid": sender.device_id,
             "id": secrets.token_hex(16), "ts": int(now), "body": plaintext}
    encrypted = etree.Element(f"{{{NS}}}encrypted", nsmap={None: NS}, sid=str(sender.device_id))
    for device_id, peer in [*theirs.items(), *own.items()]:
        box = nacl.public.Box(sender.private_key, nacl.public.PublicKey(peer.public_key))
        sub(encrypted, f"{{{NS}}}key", _b64(box.encrypt(message_key)), rid=str(device_id))
    content = json.dumps(inner, ensure_ascii=False, separators=(",", ":")).encode()
    content += b" " * (-len(content) % PAD_TO)    # JSON allows trailing whitespace
    sub(encrypted, f"{{{NS}}}payload", _b64(nacl.secret.SecretBox(message_key).encrypt(content)))
    return encrypted


def _refuse_changed(jid: str, devices: Mapping[int, PeerKey]) -> None:
    changed = sorted(d for d, k in devices.items() if k.pending_key is not None or k.trust == CHANGED)
    if changed:
        raise KeyChanged(jid, changed)


def message_children(encrypted: Element) -> list[Element]:
    """What goes into the `<message>` beside `<encrypted>`: the fallback body stock clients show,
    the XEP-0380 marker and the XEP-0334 store hint (so offline storage and the archive keep it)."""
    holder = make("message")
    sub(holder, f"{{{ns.CLIENT}}}body", FALLBACK_BODY)
    holder.append(encrypted)
    sub(holder, f"{{{EME_NS}}}encryption", namespace=NS, name=EME_NAME)
    sub(holder, f"{{{ns.HINTS}}}store")
    return list(holder)


def build_message(encrypted: Element, *, to: str, id_: str) -> Element:
    """A complete chat message carrying `encrypted`."""
    message = make("message", to=to, type_="chat", id_=id_)
    message.extend(message_children(encrypted))
    return message


def decrypt(message: Element, *, my_device: DeviceKey, sender_devices: Mapping[int, PeerKey],
            my_jid: str, replay_guard: ReplayGuard, now: float) -> Decrypted:
    """Open an encrypted `<message>` (for a carbon: the forwarded one). `sender_devices`: the known
    devices of the message's `from` account. Raises ValueError if it is not encrypted, else an
    E2EError subclass; the replay guard records the message only when every other check passed."""
    encrypted = message.find(f"{{{NS}}}encrypted")
    if encrypted is None:
        raise ValueError("not an encrypted message")
    from_bare, to_bare = _envelope_bare(message.get("from")), _envelope_bare(message.get("to"))
    sid = _device_id(encrypted.get("sid"))
    peer = sender_devices.get(sid)
    if peer is None:
        raise UnknownDevice(from_bare, sid, f"message from an unknown device {sid} of {from_bare}")
    _refuse_changed(from_bare, {sid: peer})
    message_key = _open_message_key(encrypted, my_device, peer, sid)
    inner = _open_payload(encrypted, message_key)
    if (inner["from"], inner["to"], inner["sid"]) != (from_bare, to_bare, sid):
        raise Tampered(f"the encrypted message says {inner['from']} (device {inner['sid']}) to "
                       f"{inner['to']}, the envelope {from_bare} (device {sid}) to {to_bare}")
    if bare(my_jid) not in (to_bare, from_bare):
        raise Tampered(f"the message is between {from_bare} and {to_bare}, not for {bare(my_jid)}")
    replay_guard.admit(from_bare, sid, inner["id"], inner["ts"], now)
    return Decrypted(inner["body"], from_bare, sid, inner["id"], inner["ts"], peer.trust)


def _open_message_key(encrypted: Element, my_device: DeviceKey, peer: PeerKey, sid: int) -> bytes:
    # Device ids are unique per account only: every <key> with my id is tried.
    mine = [k for k in encrypted.findall(f"{{{NS}}}key") if k.get("rid") == str(my_device.device_id)]
    if not mine:
        raise NotForThisDevice(f"the message was not encrypted for this device ({my_device.device_id})")
    box = nacl.public.Box(my_device.private_key, nacl.public.PublicKey(peer.public_key))
    for key in mine:
        try:
            message_key = box.decrypt(_unb64(key.text))
        except nacl.exceptions.CryptoError:
            continue
        if len(message_key) == KEY_BYTES:
            return message_key
    raise Tampered(f"the message key does not open with the key of sender device {sid}")


def _open_payload(encrypted: Element, message_key: bytes) -> dict:
    payload = encrypted.find(f"{{{NS}}}payload")
    if payload is None:
        raise Tampered("no <payload> in the encrypted message")
    try:
        inner = json.loads(nacl.secret.SecretBox(message_key).decrypt(_unb64(payload.text)))
    except nacl.exceptions.CryptoError:
        raise Tampered("the payload does not open with its message key") from None
    except ValueError:
        raise Tampered("the payload is not JSON") from None
    if not (isinstance(inner, dict) and inner.get("v") == VERSION and _typed(inner)):
        raise Tampered("the payload is not a version 0 message")
    return inner


def _typed(inner: dict) -> bool:
    types = {"from": str, "to": str, "sid": int, "id": str, "ts": int, "body": str}
    return all(type(inner.get(name)) is kind for name, kind in types.items())


def parse_device_id(text: str | None) -> int | None:
    """A device id written in decimal, or None if `text` is not one (1 .. 2^31-1)."""
    if not text or len(text) > 10 or not (text.isascii() and text.isdigit()):
        return None
    return int(text) if 0 < int(text) <= MAX_DEVICE_ID else None


def _device_id(text: str | None) -> int:
    device_id = parse_device_id(text)
    if device_id is None:
        raise Tampered(f"bad device id {text!r}")
    return device_id


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    try:
        return base64.b64decode((text or "").strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Tampered("invalid base64 in the encrypted message") from None
