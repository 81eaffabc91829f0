"""XEP-0352 Client State Indication: a phone in a pocket is woken only for what its user must see.

After `<inactive xmlns='urn:xmpp:csi:0'/>` the session gets a gate (`session.gate`) that holds
back what can wait, and `<active/>` flushes it. Every radio wake-up costs battery, so the rules
are about waking the phone, never about losing anything:

- **urgent** (goes out at once): every IQ (a client must answer requests, and results are
  replies it is waiting for); a message with a body or a subject, including a carbon of one
  (sent or received); a message error (a send failed); call invitations (XEP-0353) and chat
  invitations; any presence but an available, unavailable or error (subscription requests
  are questions for the user);
- **held, coalesced**: available and unavailable presence: only the latest per sender full JID
  is kept (it is state, and the newest state is all the client needs);
- **held, in order**: the rest: chat states, receipts and markers without a body, headlines
  (PEP/pubsub events, which use them; but a notification of priority high or urgent, marked by
  features/notifications.py, goes out at once), presence errors.

Before an urgent stanza goes out, everything held is flushed in order, so the client sees a
consistent history. The buffer is bounded (`[limits] csi_buffer`); when it is full everything is
flushed. When the session ends, held messages go back through `server.undelivered` (another
resource, or offline storage) and held presence is dropped (it is state, re-sent on probe).
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable

from lxml import etree

from appliance.core.events import Event
from appliance.core.server import Server
from appliance.core.session import Session
from appliance.proto import ns
from appliance.proto.c2s import Stage
from appliance.proto.stanza import Element, kind_of

log = logging.getLogger("appliance.csi")

STATE = "csi"
COALESCED_PRESENCE = frozenset({None, "unavailable"})
_URGENT_CHILDREN = (
    f"{{{ns.CLIENT}}}body",
    f"{{{ns.CLIENT}}}subject",                               # the last step of joining a room
    "{urn:xmpp:jingle-message:0}propose",                    # XEP-0353: a call is ringing
    "{jabber:x:conference}x",                                # XEP-0249 invitation
    "{http://jabber.org/protocol/muc#user}x/{http://jabber.org/protocol/muc#user}invite",
)
_WAKING_NOTIFICATION = f"{{{ns.NOTIFICATION}}}notification[@wake='true']"
_CARBON_PAYLOAD = (f"{{{ns.CARBONS}}}sent/{{{ns.FORWARD}}}forwarded/{{{ns.CLIENT}}}message",
                   f"{{{ns.CARBONS}}}received/{{{ns.FORWARD}}}forwarded/{{{ns.CLIENT}}}message")


def setup(server: Server) -> None:
    limit = server.config.limits.csi_buffer

    async def client_state(session: Session, element: Element) -> None:
        name = etree.QName(element).localname
        if name == "inactive" and STATE not in session.state:
            session.state[STATE] = held = Held(limit)
            session.gate = gate_for(session, held)
            log.debug("%s is inactive", session.jid)
        elif name == "active" and (held := session.state.pop(STATE, None)) is not None:
            session.gate = None
            log.debug("%s is active; flushing %d held stanzas", session.jid, len(held))
            if not held.flush_to(session):
                await server.undelivered(session, held.take())  # outbox full: deliver() closes it

    async def closed(session: Session) -> None:
        held = session.state.pop(STATE, None)
        session.gate = None
        if held is not None and len(held):
            # Presence is state: the client asks again (probe) when it comes back. Messages are not.
            await server.undelivered(session, [s for s in held.take() if kind_of(s) != "presence"])

    server.add_nonza(ns.CSI, client_state)
    server.add_stream_feature(stream_feature)
    server.on(Event.SESSION_CLOSED, closed)


def stream_feature(stage: Stage, session: Session | None) -> Element | None:
    if stage is not Stage.AUTHENTICATED:
        return None
    return etree.Element(f"{{{ns.CSI}}}csi", nsmap={None: ns.CSI})


def is_urgent(stanza: Element) -> bool:
    kind = kind_of(stanza)
    stanza_type = stanza.get("type")
    if kind == "presence":
        return stanza_type not in COALESCED_PRESENCE and stanza_type != "error"
    if kind != "message":
        return True  # IQs, and anything we do not know: never hold a question
    if stanza_type == "error":
        return True
    if stanza_type == "headline":
        return stanza.find(_WAKING_NOTIFICATION) is not None
    inner = next((m for path in _CARBON_PAYLOAD if (m := stanza.find(path)) is not None), stanza)
    return any(inner.find(path) is not None for path in _URGENT_CHILDREN)


class Held:
    """Stanzas held back, in order; an available/unavailable presence replaces the one before it
    from the same full JID and moves to the end (where its newer state belongs)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: dict[object, Element] = {}   # insertion-ordered
        self._numbers = itertools.count()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, stanza: Element) -> bool:
        """Hold `stanza`; False (and nothing held) when the buffer is full."""
        key: object = next(self._numbers)
        if kind_of(stanza) == "presence" and stanza.get("type") in COALESCED_PRESENCE:
            key = ("presence", stanza.get("from"))
            replaced = self._items.pop(key, None)
            if replaced is not None:
                self._items[key] = stanza
                return True
        if len(self._items) >= self.limit:
            return False
        self._items[key] = stanza
        return True

    def flush_to(self, session: Session) -> bool:
        """Push everything held, oldest first, past the gate. False when the outbox is full;
        what was not pushed stays held, in order."""
        while self._items:
            key, stanza = next(iter(self._items.items()))
            if not session.push(stanza):
                return False
            del self._items[key]
        return True

    def take(self) -> list[Element]:
        stanzas, self._items = list(self._items.values()), {}
        return stanzas


def gate_for(session: Session, held: Held) -> Callable[[Element], bool]:
    """The gate `server.deliver` consults: True = held (counts as delivered). For an urgent
    stanza, or when the buffer is full, it flushes what is held and returns False, so deliver
    pushes this one after it. If the outbox fills while flushing, deliver's own push fails too
    and closes the session; what is still held goes back at SESSION_CLOSED."""
    def gate(stanza: Element) -> bool:
        if not is_urgent(stanza):
            if held.add(stanza):
                return True
            log.debug("%s: %d stanzas held, the limit; flushing", session.jid, len(held))
        held.flush_to(session)
        return False
    return gate
