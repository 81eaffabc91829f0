"""XEP-0030 service discovery for the server and for accounts."""

from __future__ import annotations

from lxml import etree

from appliance.core.router import Routed, Target
from appliance.core.server import Server
from appliance.proto import ns
from appliance.proto.errors import StanzaError
from appliance.proto.stanza import iq_result
from appliance.store import roster

SERVER_IDENTITY = {"category": "server", "type": "im", "name": "XMPP appliance"}
ACCOUNT_IDENTITY = {"category": "account", "type": "registered"}
PEP_IDENTITY = {"category": "pubsub", "type": "pep"}   # XEP-0163 §7.1: every account is a PEP service


def setup(server: Server) -> None:
    server.add_disco_feature(ns.DISCO_INFO, account=True)
    server.add_disco_feature(ns.DISCO_ITEMS, account=True)

    async def server_info(routed: Routed) -> bool:
        return await _answer_info(server, routed, [SERVER_IDENTITY], server.disco_features["server"])

    async def account_info(routed: Routed) -> bool:
        _require_presence_access(server, routed)
        return await _answer_info(server, routed, [ACCOUNT_IDENTITY, PEP_IDENTITY],
                                  server.disco_features["account"])

    async def items(routed: Routed) -> bool:
        if routed.target is not Target.SERVER:
            _require_presence_access(server, routed)
        if routed.type != "get":
            raise StanzaError("bad-request")
        query = etree.Element(f"{{{ns.DISCO_ITEMS}}}query", nsmap={None: ns.DISCO_ITEMS})
        if node := routed.payload.get("node"):  # type: ignore[union-attr]
            query.set("node", node)
        await server.reply(routed, iq_result(routed.el, query))
        return True

    server.hook("iq", ns.DISCO_INFO, server_info, targets=frozenset({Target.SERVER}))
    server.hook("iq", ns.DISCO_INFO, account_info, targets=frozenset({Target.ACCOUNT, Target.BARE}))
    server.hook("iq", ns.DISCO_ITEMS, items, targets=frozenset({Target.SERVER, Target.ACCOUNT, Target.BARE}))


def _require_presence_access(server: Server, routed: Routed) -> None:
    """Only the account itself and contacts it shares presence with may discover it (privacy)."""
    if routed.target is Target.ACCOUNT:
        return
    item = server.db.read(roster.get_item, routed.to_bare.local, str(routed.from_.bare))
    if item is None or item.subscription not in ("from", "both"):
        raise StanzaError("service-unavailable")


async def _answer_info(server: Server, routed: Routed, identities: list[dict[str, str]],
                       features: set[str]) -> bool:
    if routed.type != "get":
        raise StanzaError("bad-request")
    query = etree.Element(f"{{{ns.DISCO_INFO}}}query", nsmap={None: ns.DISCO_INFO})
    if node := routed.payload.get("node"):  # type: ignore[union-attr]
        raise StanzaError("item-not-found", f"no node {node}")
    for identity in identities:
        etree.SubElement(query, f"{{{ns.DISCO_INFO}}}identity", identity)
    for var in sorted(features):
        etree.SubElement(query, f"{{{ns.DISCO_INFO}}}feature", var=var)
    await server.reply(routed, iq_result(routed.el, query))
    return True
