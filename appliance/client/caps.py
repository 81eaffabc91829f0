"""XEP-0115 entity capabilities of the appliance's client: what it tells the server it supports.

The server sends PEP events only to clients whose presence carries `<c hash='sha-1' node ver/>`
with `urn:appliance:e2e:0:devices+notify` among the features, after asking the client (disco#info
to `node#ver`) and checking that the answer hashes to `ver` (§5.1; appliance/features/pep_caps.py
computes the same verification string, which is why it is reused here).
"""

from __future__ import annotations

import base64
import hashlib

from lxml import etree

from appliance.client.e2e import EME_NS, NS
from appliance.client.e2e_devices import DEVICES_NODE
from appliance.features.pep_caps import CAPS, NOTIFY, verification_string
from appliance.proto import ns
from appliance.proto.stanza import Element, make, sub

NODE = "https://appliance.invalid/client"     # names the software; XEP-0115 §4 wants a URI
IDENTITY = {"category": "client", "type": "pc", "name": "Appliance client"}
FEATURES = (ns.DISCO_INFO, CAPS, NS, EME_NS, DEVICES_NODE, DEVICES_NODE + NOTIFY)


def disco_info(node: str | None = None) -> Element:
    """This client's disco#info `<query/>` (with `node` echoed when one was asked for)."""
    query = _query(node)
    sub(query, f"{{{ns.DISCO_INFO}}}identity", **IDENTITY)
    for feature in FEATURES:
        sub(query, f"{{{ns.DISCO_INFO}}}feature", var=feature)
    return query


def _query(node: str | None) -> Element:
    query = etree.Element(f"{{{ns.DISCO_INFO}}}query", nsmap={None: ns.DISCO_INFO})
    if node is not None:
        query.set("node", node)
    return query


def ver() -> str:
    """§5: base64 of the SHA-1 of the verification string."""
    return base64.b64encode(hashlib.sha1(verification_string(disco_info()).encode()).digest()).decode()


def caps_element() -> Element:
    """The `<c/>` child of every available presence this client sends."""
    holder = make("presence")
    return sub(holder, f"{{{CAPS}}}c", hash="sha-1", node=NODE, ver=ver())


def answers(node: str | None) -> bool:
    """Whether a disco#info request for `node` is ours to answer (none, or `NODE#ver`)."""
    return node is None or node == f"{NODE}#{ver()}"
