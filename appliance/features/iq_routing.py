"""RFC 6120 §10.5.3 / RFC 6121 §8.5.3.1: an IQ to a local full JID is forwarded to that resource.

Without the resource, an IQ get/set gets service-unavailable (the router's fallback)."""

from __future__ import annotations

from appliance.core.router import ANY, Routed, Target
from appliance.core.server import Server
from appliance.proto.errors import StanzaError


def setup(server: Server) -> None:
    async def to_full(routed: Routed) -> bool:
        assert routed.to is not None
        session = server.sessions.get(routed.to)
        if session is None:
            if routed.type in ("get", "set"):
                raise StanzaError("service-unavailable")
            return True  # results and errors to a gone resource are dropped
        if not server.deliver(session, routed.el) and routed.type in ("get", "set"):
            raise StanzaError("recipient-unavailable")
        return True

    server.hook("iq", ANY, to_full, targets=frozenset({Target.FULL}), priority=-100)
