"""What a device publishes of its keys (PEP, XEP-0163) and what an invite carries of them.

Sans-I/O, beside e2e.py (docs/e2e.md, "Device list" and "Invites"). One PEP node per account,
`urn:appliance:e2e:0:devices`, with a single item "current" listing every device of the account with
its public key: one fetch gives a sender all the keys it needs, and a `+notify` subscriber hears about
a new device at once. Contact invites carry the inviter's key fingerprints as URI parameters
`e2e-sid-<device id>=<sha-256 hex>` (the pattern of Conversations' `omemo-sid-<id>=<hex>`), which
stock clients ignore.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from lxml import etree

from appliance.client.e2e import KEY_BYTES, NS, fingerprint_hex, parse_device_id
from appliance.proto import forms
from appliance.proto.stanza import Element, make, sub

DEVICES_NODE = f"{NS}:devices"
ITEM_ID = "current"
PUBSUB = "http://jabber.org/protocol/pubsub"
PUBLISH_OPTIONS = f"{PUBSUB}#publish-options"
INVITE_PREFIX = "e2e-sid-"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BadDeviceList(ValueError):
    """A published device list (or an invite's key parameter) that cannot be read."""


def device_list_item(devices: Mapping[int, bytes]) -> Element:
    """The pubsub `<item id='current'>` listing `devices` (device id -> 32-byte public key)."""
    item = etree.Element(f"{{{PUBSUB}}}item", nsmap={None: PUBSUB}, id=ITEM_ID)
    listing = sub(item, f"{{{NS}}}devices")
    for device_id, public_key in sorted(devices.items()):
        if len(public_key) != KEY_BYTES:
            raise ValueError(f"device {device_id}: a public key is {KEY_BYTES} bytes")
        sub(listing, f"{{{NS}}}device", id=str(device_id), key=base64.b64encode(public_key).decode())
    return item


def parse_device_list(item: Element) -> dict[int, bytes]:
    """The devices in a published item (from a pubsub items result or a `+notify` event, whichever
    namespace the `<item>` is in). Raises BadDeviceList: a list that cannot be read in full is not
    used at all, so no device is silently dropped from encryption."""
    listing = item.find(f"{{{NS}}}devices")
    if listing is None:
        raise BadDeviceList(f"the item holds no <devices xmlns='{NS}'>")
    devices: dict[int, bytes] = {}
    for device in listing.findall(f"{{{NS}}}device"):
        device_id = parse_device_id(device.get("id"))
        if device_id is None or device_id in devices:
            raise BadDeviceList(f"bad or repeated device id {device.get('id')!r}")
        try:
            public_key = base64.b64decode(device.get("key") or "", validate=True)
        except (binascii.Error, ValueError):
            public_key = b""
        if len(public_key) != KEY_BYTES:
            raise BadDeviceList(f"device {device_id}: the key is not {KEY_BYTES} bytes of base64")
        devices[device_id] = public_key
    return devices


def publish_request(devices: Mapping[int, bytes], id_: str) -> Element:
    """The IQ that publishes the account's device list, readable by contacts with a presence
    subscription (publish-options access_model 'presence', one item kept)."""
    iq = make("iq", type_="set", id_=id_)
    pubsub = sub(iq, f"{{{PUBSUB}}}pubsub")
    publish = sub(pubsub, f"{{{PUBSUB}}}publish", node=DEVICES_NODE)
    publish.append(device_list_item(devices))
    options = sub(pubsub, f"{{{PUBSUB}}}publish-options")
    options.append(forms.build("submit", [
        forms.Field("pubsub#access_model", values=("presence",)),
        forms.Field("pubsub#max_items", values=("1",)),
    ], form_type=PUBLISH_OPTIONS))
    return iq


def fetch_request(jid: str, id_: str) -> Element:
    """The IQ that fetches `jid`'s device list (the reply's items hold one `device_list_item`)."""
    iq = make("iq", to=jid, type_="get", id_=id_)
    pubsub = sub(iq, f"{{{PUBSUB}}}pubsub")
    sub(pubsub, f"{{{PUBSUB}}}items", node=DEVICES_NODE, max_items="1")
    return iq


def invite_param(device_id: int, public_key: bytes) -> tuple[str, str]:
    """The URI parameter (name, value) naming one device's key fingerprint."""
    return f"{INVITE_PREFIX}{device_id}", fingerprint_hex(public_key)


def with_invite_params(uri: str, devices: Mapping[int, bytes]) -> str:
    """`uri` (an xmpp: invite, with its '?action') with a fingerprint parameter for each device."""
    if "?" not in uri:
        raise ValueError("an invite URI has an action ('?roster;...') the parameters follow")
    params = (invite_param(d, k) for d, k in sorted(devices.items()))
    return uri + "".join(f";{name}={value}" for name, value in params)


def parse_invite_params(params: Mapping[str, str]) -> dict[int, str]:
    """Device id -> lowercase hex fingerprint, from an invite's parameters (ParsedUri.params).
    Other parameters are ignored; a malformed key parameter raises BadDeviceList, since a damaged
    QR code must not turn a verified contact into an unverified one silently."""
    fingerprints: dict[int, str] = {}
    for name, value in params.items():
        if not name.startswith(INVITE_PREFIX):
            continue
        device_id = parse_device_id(name[len(INVITE_PREFIX):])
        hexdigits = value.lower()
        if device_id is None or not _HEX64.fullmatch(hexdigits):
            raise BadDeviceList(f"bad key fingerprint parameter {name}={value}")
        fingerprints[device_id] = hexdigits
    return fingerprints
