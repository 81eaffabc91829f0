"""XEP-0092: the server's software name and version (no OS: it helps attackers more than users)."""

from __future__ import annotations

from lxml import etree

from appliance import __version__
from appliance.core.router import Routed, Target
from appliance.core.server import Server
from appliance.proto import ns
from appliance.proto.stanza import iq_result


def setup(server: Server) -> None:
    async def version(routed: Routed) -> bool:
        if routed.type != "get":
            return False
        query = etree.Element(f"{{{ns.VERSION}}}query", nsmap={None: ns.VERSION})
        etree.SubElement(query, f"{{{ns.VERSION}}}name").text = "XMPP appliance"
        etree.SubElement(query, f"{{{ns.VERSION}}}version").text = __version__
        await server.reply(routed, iq_result(routed.el, query))
        return True

    server.hook("iq", ns.VERSION, version, targets=frozenset({Target.SERVER}))
    server.add_disco_feature(ns.VERSION)
