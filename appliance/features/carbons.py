"""XEP-0280 Message Carbons: every device of a user sees both sides of every conversation.

A session opts in with an IQ (`<enable/>` / `<disable/>`); the choice lives in
`session.state["carbons"]`. Two kinds of copies, both wrapped in XEP-0297 `<forwarded/>` and sent
from the user's bare JID:

- *received*: after delivery (Event.MESSAGE_DELIVERED) the recipient's other available,
  carbons-enabled resources that did not get the message get a `<received/>` copy;
- *sent*: a message a local session sends (to anyone, another domain included) is copied as
  `<sent/>` to the sender's other carbons-enabled resources, by an observer that runs before
  delivery and never ends the handler chain.

Copies go straight to `server.deliver` and never through the router, so no copy is itself copied,
archived or bounced; a message that already carries a carbon (a forged or forwarded one) is never
eligible either, so there is no way to loop.

Left as it is: the recipient's server SHOULD strip `<private/>` before delivery (§8); it is kept,
because the copy decision is made after delivery, from the delivered element itself.
"""

from __future__ import annotations

import copy
import logging

from lxml import etree

from appliance.core.events import Event
from appliance.core.router import ALL_TARGETS, ANY, Routed, Target
from appliance.core.server import Server
from appliance.core.session import Session
from appliance.proto import ns
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID
from appliance.proto.stanza import Element, iq_result, make

log = logging.getLogger("appliance.carbons")

STATE = "carbons"
SENT_PRIORITY = 10          # above delivery (-100), so the copy goes out with the original
MARKERS = "urn:xmpp:chat-markers:0"                # XEP-0333
MUC_USER = "http://jabber.org/protocol/muc#user"   # XEP-0045
# Payloads that make a body-less message of type 'normal' part of a conversation: a read marker
# or a receipt should reach every device, so that each one shows the same state.
IM_PAYLOADS = frozenset({ns.CHATSTATES, ns.RECEIPTS, MARKERS})
_NEVER = (f"{{{ns.CARBONS}}}private", f"{{{ns.HINTS}}}no-copy",        # the sender said no (§8, XEP-0334)
          f"{{{ns.CARBONS}}}sent", f"{{{ns.CARBONS}}}received")       # a carbon is never copied again


def setup(server: Server) -> None:
    server.add_disco_feature(ns.CARBONS)

    async def toggle(routed: Routed) -> bool:
        session = routed.origin
        if session is None:
            raise StanzaError("not-allowed", "only a client of this server sets its own carbons")
        payload = routed.payload
        name = etree.QName(payload).localname if payload is not None else None
        if routed.type != "set" or name not in ("enable", "disable"):
            raise StanzaError("bad-request")
        # Repeating an enable or a disable is not an error (§9.1): the result is the same.
        session.state[STATE] = name == "enable"
        log.debug("%s %sd carbons", session.jid, name)
        await server.reply(routed, iq_result(routed.el))
        return True

    async def sent(routed: Routed) -> bool:
        """Copy what a local session sends to its other devices; never handles the message."""
        sender = routed.origin
        if sender is None or _own_account(routed):
            return False
        targets = copy_targets(server, sender.jid.bare, skip=[sender])
        if targets and eligible(routed.el, received=False):  # most users have one device: no check
            copy_to(server, targets, sender.jid.bare, "sent", routed.el)
        return False

    async def delivered(routed: Routed, sessions: list[Session]) -> None:
        if _own_account(routed):
            return
        targets = copy_targets(server, routed.to_bare, skip=sessions)
        if targets and eligible(routed.el, received=True):
            copy_to(server, targets, routed.to_bare, "received", routed.el)

    server.hook("iq", ns.CARBONS, toggle, targets=frozenset({Target.ACCOUNT, Target.SERVER}))
    server.hook("message", ANY, sent, targets=ALL_TARGETS, priority=SENT_PRIORITY)
    server.on(Event.MESSAGE_DELIVERED, delivered)


def eligible(el: Element, *, received: bool) -> bool:
    """§6: chat, normal with a body (or with receipts, markers, chat states); never errors,
    headlines or groupchat; never what a MUC sent (PMs included); never private or a carbon."""
    if any(el.find(tag) is not None for tag in _NEVER):
        return False
    if received and el.find(f"{{{MUC_USER}}}x") is not None:
        return False
    msg_type = el.get("type") or "normal"
    if msg_type == "chat":
        return True
    if msg_type != "normal":
        return False
    if el.find(f"{{{ns.CLIENT}}}body") is not None:
        return True
    return any(isinstance(c.tag, str) and etree.QName(c).namespace in IM_PAYLOADS for c in el)


def _own_account(routed: Routed) -> bool:
    """Between the resources of one account both sides are that account's devices already: a
    copy would only be a duplicate."""
    return routed.to is None or routed.to.bare == routed.from_.bare


def copy_targets(server: Server, owner: JID, *, skip: list[Session]) -> list[Session]:
    """The owner's available, carbons-enabled resources not in `skip`."""
    return [session for session in server.sessions.available(owner)
            if session.state.get(STATE) and session not in skip]


def copy_to(server: Server, targets: list[Session], owner: JID, direction: str, el: Element) -> None:
    """A `<sent/>` or `<received/>` copy for each target."""
    for session in targets:
        server.deliver(session, wrap(el, owner, session.jid, direction))


def wrap(el: Element, owner: JID, to: JID, direction: str) -> Element:
    """§6/§7: from the bare JID, to one resource, same type; the original inside, unchanged."""
    wrapper = make("message", from_=owner, to=to, type_=el.get("type"))
    carbon = etree.SubElement(wrapper, f"{{{ns.CARBONS}}}{direction}", nsmap={None: ns.CARBONS})
    forwarded = etree.SubElement(carbon, f"{{{ns.FORWARD}}}forwarded", nsmap={None: ns.FORWARD})
    forwarded.append(copy.deepcopy(el))   # a copy per recipient: the original sits in other outboxes
    return wrapper
