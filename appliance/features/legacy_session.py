"""RFC 3921 session establishment: a no-op that older clients still send; we advertise it optional."""

from __future__ import annotations

from appliance.core.router import Routed, Target
from appliance.core.server import Server
from appliance.proto import ns
from appliance.proto.stanza import iq_result


def setup(server: Server) -> None:
    async def session(routed: Routed) -> bool:
        await server.reply(routed, iq_result(routed.el))
        return True

    server.hook("iq", ns.SESSION, session, targets=frozenset({Target.SERVER, Target.ACCOUNT}))
