"""RFC 6121 §8.5: delivering <message/> to local accounts, by bare or full JID, with priorities."""

from __future__ import annotations

from appliance.core.events import Event
from appliance.core.router import ANY, Routed, Target
from appliance.core.server import Server
from appliance.features import offline
from appliance.proto.errors import StanzaError
from appliance.store import users

OFFLINE_TYPES = {"normal", "chat"}


def setup(server: Server) -> None:
    async def to_account(routed: Routed) -> bool:
        """Bare JID (§8.5.2.1): the highest-priority available resources; nobody there: offline."""
        present = server.sessions.of(routed.to_bare)
        if routed.type == "error" and not present:
            return True  # errors to nobody are dropped
        if not present and not server.db.read(users.user_exists, routed.to_bare.local):
            raise StanzaError("service-unavailable")  # (someone logged in has an account: no read)
        return await deliver_to_bare(server, routed)

    async def to_full(routed: Routed) -> bool:
        """Full JID (§8.5.3): that resource, or else treated as the bare JID where the type allows."""
        assert routed.to is not None
        session = server.sessions.get(routed.to)
        if session is not None:
            receipt = await offline.persist(server, routed) if (routed.type or "normal") in OFFLINE_TYPES else None
            if server.deliver(session, routed.el, receipt):
                await server.emit(Event.MESSAGE_DELIVERED, routed, [session])
                return True
        if routed.type == "groupchat" or not server.db.read(users.user_exists, routed.to.local):
            raise StanzaError("service-unavailable")
        if routed.type == "error":
            return True
        return await deliver_to_bare(server, routed)

    server.hook("message", ANY, to_account, targets=frozenset({Target.ACCOUNT, Target.BARE}), priority=-100)
    server.hook("message", ANY, to_full, targets=frozenset({Target.FULL}), priority=-100)


async def deliver_to_bare(server: Server, routed: Routed) -> bool:
    msg_type = routed.type or "normal"
    sessions = [s for s in server.sessions.available(routed.to_bare) if s.priority >= 0]
    if msg_type == "groupchat":
        raise StanzaError("service-unavailable")
    if msg_type == "headline":
        for session in sessions:
            server.deliver(session, routed.el)
        return True  # headlines to nobody may be dropped (§8.5.2.1.1)
    if sessions:
        receipt = await offline.persist(server, routed) if msg_type in OFFLINE_TYPES else None
        top = max(s.priority for s in sessions)
        # Every "most available" resource gets it (§8.5.2.1.1 (a)): a phone and a desktop at the
        # same priority both show the message.
        delivered = [s for s in sessions if s.priority == top and server.deliver(s, routed.el, receipt)]
        if delivered:
            await server.emit(Event.MESSAGE_DELIVERED, routed, delivered)
            return True
    if msg_type in OFFLINE_TYPES and await server.emit(Event.MESSAGE_OFFLINE, routed):
        return True
    raise StanzaError("service-unavailable" if msg_type != "error" else "recipient-unavailable")
