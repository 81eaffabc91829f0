"""Contact invites from the appliance's client: ask the server for one (XEP-0401's ad-hoc command
`urn:xmpp:invite#invite`, appliance/features/invite_commands.py) and add this account's device
key fingerprints (`e2e-sid-<id>=<sha256 hex>`, docs/e2e.md), so whoever scans the QR code gets
the inviter's keys verified rather than trusted on first use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from appliance.client.e2e_devices import parse_invite_params, with_invite_params
from appliance.client.keys import KeyStore
from appliance.client.pairing import pair
from appliance.client.state import ClientState
from appliance.client.stream import Account, ClientStream
from appliance.pairing.invites import parse_uri
from appliance.proto import ns
from appliance.proto.stanza import make, sub

INVITE_NODE = "urn:xmpp:invite#invite"


class NoInvite(Exception):
    """The server's answer to the invite command carried no invite URI."""


async def request_contact_invite(stream: ClientStream, devices: Mapping[int, bytes]) -> str:
    """A contact-invite URI from the server (with its TLS pin) plus `devices`' fingerprints."""
    request = make("iq", to=stream.domain, type_="set")
    sub(request, f"{{{ns.COMMANDS}}}command", node=INVITE_NODE, action="execute")
    answer = await stream.iq(request)
    uri = answer.findtext(f"{{{ns.COMMANDS}}}command/{{{ns.DATA_FORMS}}}x/{{{ns.DATA_FORMS}}}field[@var='uri']"
                          f"/{{{ns.DATA_FORMS}}}value")
    if not uri:
        raise NoInvite("the server answered the invite command without an invite URI")
    return with_invite_params(uri, devices)


async def pair_with_keys(uri: str, state: ClientState, **options: Any) -> Account:
    """pairing.pair, then the invite's `e2e-sid-*` fingerprints recorded as verified."""
    account = await pair(uri, state, **options)
    record_invite_keys(state, uri)
    return account


def record_invite_keys(state: ClientState, uri: str) -> None:
    """Trust the inviter's device keys named in a contact invite (KeyStore.verify: the key is
    checked against the fingerprint when it arrives, or now if it is known)."""
    invite = parse_uri(uri.strip())
    keys = KeyStore(state.conn)
    for device_id, fingerprint in parse_invite_params(invite.params).items():
        keys.verify(invite.jid, device_id, fingerprint)
