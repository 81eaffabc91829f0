"""XEP-0199: answer pings to the server and to accounts. (The server's own pings live in net/c2s.)"""

from __future__ import annotations

from appliance.core.router import Routed, Target
from appliance.core.server import Server
from appliance.proto import ns
from appliance.proto.stanza import iq_result


def setup(server: Server) -> None:
    async def pong(routed: Routed) -> bool:
        if routed.type != "get":
            return False
        await server.reply(routed, iq_result(routed.el))
        return True

    server.hook("iq", ns.PING, pong, targets=frozenset({Target.SERVER, Target.ACCOUNT}))
    server.add_disco_feature(ns.PING, account=False)
