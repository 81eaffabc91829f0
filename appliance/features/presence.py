"""RFC 6121 §4: presence broadcast, probes, directed presence, priority, and unavailable on disconnect.

Every presence this module sends on someone's behalf goes through `server.route` with no origin
session, and arrives back here (or, for another domain, at whatever delivers there) as inbound
presence: a local contact and a remote one are reached the same way, and the order of what one
entity sends to another is the order of the calls.

Subscription presences (subscribe, subscribed, unsubscribe, unsubscribed) belong to
features/subscription.py, which runs before this module.
"""

from __future__ import annotations

import copy
import logging

from lxml import etree

from appliance.core.events import Event
from appliance.core.router import ANY, Routed, Target
from appliance.core.server import Server
from appliance.core.session import Session
from appliance.proto import ns
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID
from appliance.proto.stanza import Element, make
from appliance.store import roster

log = logging.getLogger("appliance.presence")

SUBSCRIPTION_TYPES = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})
KNOWN_TYPES = SUBSCRIPTION_TYPES | {None, "unavailable", "probe", "error"}
SHARES_PRESENCE = ("from", "both")   # the contact may see the user's presence
SEES_PRESENCE = ("to", "both")       # the user may see the contact's presence
MAX_DIRECTED = 1000                  # directed-presence targets remembered per session

# Our own database's XML, parsed with the same refusals as the stream parser.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def setup(server: Server) -> None:
    announced: set[Session] = set()  # sessions that have had their PRESENCE_INITIAL

    async def presence(routed: Routed) -> bool:
        if routed.type in SUBSCRIPTION_TYPES:
            return False
        if routed.type not in KNOWN_TYPES:
            raise StanzaError("bad-request", f"unknown presence type {routed.type!r}")
        origin = routed.origin
        if origin is not None and routed.to is None:
            await _own_presence(server, origin, routed, announced)
            return True
        if origin is not None and routed.type in (None, "unavailable"):
            _track_directed(server, origin, routed)
        if routed.target is Target.REMOTE:
            return False  # to another server: left to the delivery for remote domains
        await _deliver_inbound(server, routed)
        return True

    async def closed(session: Session) -> None:
        """§4.5.2 and §4.6.3: a session that ends without saying goodbye still goes unavailable."""
        announced.discard(session)
        if session.presence is not None or session.directed:
            await unavailable(server, session, make("presence", from_=session.jid, type_="unavailable"))

    targets = frozenset({Target.ACCOUNT, Target.BARE, Target.FULL, Target.REMOTE})
    server.hook("presence", ANY, presence, targets=targets)
    server.on(Event.SESSION_CLOSED, closed)


async def _own_presence(server: Server, session: Session, routed: Routed, announced: set[Session]) -> None:
    """Presence with no 'to': the user's broadcast (§4.2 initial, §4.4 update, §4.5 unavailable)."""
    if routed.type is None:
        initial = session.presence is None
        items = await available(server, session, routed.el)
        if initial:
            await _after_initial(server, session, items)
            if session not in announced:
                announced.add(session)
                await server.emit(Event.PRESENCE_INITIAL, session)
    elif routed.type == "unavailable":
        await unavailable(server, session, routed.el)
    # A probe or an error with no 'to' means nothing (§4.3.1: probes are the server's business).


# ---- the user's own broadcast ------------------------------------------------------------------

async def available(server: Server, session: Session, el: Element) -> list[roster.RosterItem]:
    """§4.2.2 / §4.4.2: to every contact with a 'from' subscription and to the user's available
    resources. Returns the roster it read."""
    stored = _without_to(el)
    session.presence = stored
    session.priority = priority_of(el)
    _, items = server.db.read(roster.get_roster, session.username)
    for item in items:
        if session.presence is not stored:
            break  # went away (or changed) while we were sending: what is newer has been sent
        if item.subscription in SHARES_PRESENCE:
            await server.route(addressed(stored, item.contact))
    # §4.2.2: the user's own resources too, including the one that sent it.
    for other in server.sessions.available(session.jid.bare):
        server.deliver(other, addressed(stored, other.jid))
    log.debug("%s is available (priority %d)", session.jid, session.priority)
    return items


async def _after_initial(server: Server, session: Session, items: list[roster.RosterItem]) -> None:
    """§4.2.2: probe the contacts we may see; show the other resources; §3.1.3: re-ask pending requests."""
    for item in items:
        if item.subscription in SEES_PRESENCE and session.available:
            await server.route(make("presence", to=item.contact, from_=session.jid, type_="probe"))
    for other in server.sessions.available(session.jid.bare):
        if other is not session and other.presence is not None:
            server.deliver(session, addressed(other.presence, session.jid))
    for _, stanza in server.db.read(roster.pending_in, session.username):
        server.deliver(session, parse_stored(stanza))


async def unavailable(server: Server, session: Session, el: Element) -> None:
    """§4.5.2: to the contacts and own resources that saw us available, and (§4.6.3) every
    entity we sent directed presence to."""
    stored = _without_to(el)
    was_available = session.presence is not None
    session.presence = None
    told: set[JID] = set()
    if was_available:
        _, items = server.db.read(roster.get_roster, session.username)
        for item in items:
            if item.subscription in SHARES_PRESENCE:
                await server.route(addressed(stored, item.contact))
                told.add(JID.parse(item.contact))
        for other in server.sessions.available(session.jid.bare):
            if other is not session:
                server.deliver(other, addressed(stored, other.jid))
    for target in list(session.directed):
        if target.bare not in told:
            await server.route(addressed(stored, target))
    session.directed.clear()
    log.debug("%s is unavailable", session.jid)


def _track_directed(server: Server, session: Session, routed: Routed) -> None:
    """§4.6.2: remember who got directed presence, so they hear when we leave. Contacts that see
    our broadcasts anyway are not remembered (they get the broadcast unavailable)."""
    to = routed.to
    assert to is not None
    if routed.type == "unavailable":
        session.directed.discard(to)
        return
    if to.bare == session.jid.bare or len(session.directed) >= MAX_DIRECTED:
        return
    item = server.db.read(roster.get_item, session.username, str(to.bare))
    if item is None or item.subscription not in SHARES_PRESENCE:
        session.directed.add(to)


# ---- presence arriving for a local account ---------------------------------------------------------

async def _deliver_inbound(server: Server, routed: Routed) -> None:
    if routed.type == "probe":
        await answer_probe(server, routed.from_, routed.to_bare)
        return
    if routed.target is Target.FULL:
        assert routed.to is not None
        session = server.sessions.get(routed.to)
        if session is not None:
            await _deliver(server, session, routed)
        return  # §8.5.3.2.1: presence to a resource that is not there is dropped
    # §8.5.2.1.1: to the bare JID, every available resource; nobody available, nobody to tell.
    for session in server.sessions.available(routed.to_bare):
        await _deliver(server, session, routed)


async def _deliver(server: Server, session: Session, routed: Routed) -> None:
    """A probe's answers to a user with a big roster can outnumber the outbox's stanzas: they are
    delivered patiently, in the prober's own reader; an inactive client's (XEP-0352) gate takes
    them as usual. Anything else is never waited for: one slow reader must not stall others."""
    if routed.patient and session.gate is None:
        await server.deliver_patiently(session, routed.el)
    else:
        server.deliver(session, routed.el)


async def answer_probe(server: Server, prober: JID, contact: JID) -> None:
    """§4.3.2, answered by the contact's server on the contact's behalf."""
    if contact.local is None:
        return
    if prober.bare != contact:
        item = server.db.read(roster.get_item, contact.local, str(prober.bare))
        if item is None or item.subscription not in SHARES_PRESENCE:
            # Also what a missing account gets; it makes the prober's server drop a stale 'to'.
            await server.route(make("presence", to=prober.bare, from_=contact, type_="unsubscribed"))
            return
    sessions = server.sessions.available(contact)
    if not sessions:
        await server.route(make("presence", to=prober, from_=contact, type_="unavailable"), patient=True)
    for session in sessions:
        assert session.presence is not None
        await server.route(addressed(session.presence, prober), patient=True)


# ---- helpers for features/subscription.py and features/roster.py --------------------------------

async def send_available(server: Server, user: JID, contact: JID) -> None:
    """§3.1.5: the presence of each of the user's available resources, to a new subscriber."""
    for session in server.sessions.available(user.bare):
        assert session.presence is not None
        await server.route(addressed(session.presence, contact))


async def send_unavailable(server: Server, user: JID, contact: JID) -> None:
    """§3.2.2: a contact that may no longer see the user is told the user went away."""
    for session in server.sessions.available(user.bare):
        await server.route(make("presence", to=contact, from_=session.jid, type_="unavailable"))


def priority_of(el: Element) -> int:
    """§4.7.2.3: an integer from -128 to 127; missing or unreadable counts as 0."""
    text = el.findtext(f"{{{ns.CLIENT}}}priority")
    try:
        value = int((text or "0").strip())
    except ValueError:
        return 0
    return max(-128, min(127, value))


def addressed(el: Element, to: JID | str) -> Element:
    """A copy for one recipient: a stanza may sit in several outboxes, so none is shared and edited."""
    copied = copy.deepcopy(el)
    copied.set("to", str(to))
    return copied


def _without_to(el: Element) -> Element:
    copied = copy.deepcopy(el)
    copied.attrib.pop("to", None)
    return copied


def parse_stored(xml: bytes) -> Element:
    return etree.fromstring(xml, _PARSER)
