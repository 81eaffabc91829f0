"""One module per RFC section or XEP, each with `setup(server)`.

Imported statically (not discovered) so PyInstaller sees every one. The order is the order in
which they register; priorities, not order, decide who runs first.
"""

from __future__ import annotations

from appliance.core.server import Server
from appliance.features import (blocking, carbons, csi, disco, iq_routing, legacy_session, mam, message, offline,
                                 ping, presence, register, roster, subscription, version)
from appliance.features import adhoc, invite_commands, invites, notifications, pep, push

FEATURES = [blocking, message, iq_routing, legacy_session, ping, version, disco, register, roster, subscription,
            presence, offline, carbons, csi, mam, adhoc, invite_commands, invites, notifications, push, pep]


def setup_all(server: Server) -> None:
    for feature in FEATURES:
        feature.setup(server)
