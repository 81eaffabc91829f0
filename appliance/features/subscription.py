"""RFC 6121 §3: presence subscriptions, with the state tables of Appendix A and pre-approval (§3.4).

Every subscription presence is handled in two halves, even between two local users:
  outbound - the user's client sent it: change the user's item (§3.x.2, Appendix A.2), stamp bare
             JIDs (§3.1.2), and route it onward with no origin session;
  inbound  - it arrives for a local account, from a local user or another server: change that
             account's item (§3.x.3, Appendix A.3) and tell its resources.
So a local contact and a remote one follow the same path, and the router carries the stanza from
one half to the other (for another domain, to whatever delivers there).

A subscription state is the roster item (to, from, ask, approved) plus whether a request from the
contact waits in store.roster's pending table ("Pending In", §3.1.3). Each half is one write
transaction, and the user's half always commits before the contact's, so a 'to' on one side never
exists without the 'from' on the other.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, replace

from appliance.core.router import ANY, Routed, Target
from appliance.core.server import Server
from appliance.features import presence, roster
from appliance.proto import ns
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID
from appliance.proto.stanza import make, serialize
from appliance.store import roster as store
from appliance.store.users import NoSuchUser

log = logging.getLogger("appliance.subscription")

TYPES = presence.SUBSCRIPTION_TYPES


@dataclass(frozen=True, slots=True)
class State:
    to: bool = False            # the user sees the contact's presence
    from_: bool = False         # the contact sees the user's presence
    ask: bool = False           # Pending Out: the user asked, no answer yet
    pending_in: bool = False    # Pending In: the contact asked, the user has not answered
    approved: bool = False      # §3.4: the contact's future request is approved in advance

    @classmethod
    def of(cls, item: store.RosterItem | None, pending_in: bool) -> State:
        if item is None:
            return cls(pending_in=pending_in)
        return cls(item.subscription in ("to", "both"), item.subscription in ("from", "both"),
                   item.ask, pending_in, item.approved)

    @property
    def subscription(self) -> str:
        return {(True, True): "both", (True, False): "to", (False, True): "from"}.get((self.to, self.from_), "none")

    @property
    def item_fields(self) -> tuple[bool, bool, bool, bool]:
        return self.to, self.from_, self.ask, self.approved

    def applied_to(self, item: store.RosterItem) -> store.RosterItem:
        return replace(item, subscription=self.subscription, ask=self.ask, approved=self.approved)


def outbound(state: State, kind: str) -> State:
    """Appendix A.2: the user's server, for what the user sent."""
    if kind == "subscribe":
        return state if state.to else replace(state, ask=True)
    if kind == "unsubscribe":
        return replace(state, to=False, ask=False)
    if kind == "subscribed":
        if state.pending_in:
            return replace(state, from_=True, pending_in=False, approved=False)
        return state if state.from_ else replace(state, approved=True)  # §3.4.1 pre-approval
    if kind == "unsubscribed":
        return replace(state, from_=False, pending_in=False, approved=False)
    raise ValueError(kind)


def inbound(state: State, kind: str) -> State:
    """Appendix A.3: the contact's server, for what arrived for the contact."""
    if kind == "subscribe":
        if state.from_:
            return state
        if state.approved:
            return replace(state, from_=True, approved=False)  # §3.4.2: answered in advance
        return replace(state, pending_in=True)
    if kind == "unsubscribe":
        return replace(state, from_=False, pending_in=False)
    if kind == "subscribed":
        return replace(state, to=True, ask=False) if state.ask else state  # unasked: ignored (§3.1.6)
    if kind == "unsubscribed":
        return replace(state, to=False, ask=False)
    raise ValueError(kind)


@dataclass(frozen=True, slots=True)
class Change:
    before: State
    after: State
    item: store.RosterItem | None   # the item afterwards
    version: int | None             # set when the item changed, for the roster push


def transition(conn: sqlite3.Connection, owner: str, peer: str, kind: str, outgoing: bool,
               request: bytes | None, limit: int) -> Change:
    """One write transaction: read the state of `peer` in `owner`'s roster, apply `kind`, store it."""
    item = store.get_item(conn, owner, peer)
    before = State.of(item, store.get_pending_in(conn, owner, peer) is not None)
    after = (outbound if outgoing else inbound)(before, kind)
    version = None
    # Pending In alone lives outside the roster (§3.1.3); any other state needs an item.
    if after.item_fields != before.item_fields and (item is not None or any(after.item_fields)):
        if item is None and store.count_items(conn, owner) >= limit:
            raise StanzaError("resource-constraint", f"the roster is full ({limit} contacts)")
        item = after.applied_to(item or store.RosterItem(peer))
        version = store.set_item(conn, owner, item)
    if after.pending_in and request is not None:
        store.store_pending_in(conn, owner, peer, request)  # a newer request replaces the older
    elif before.pending_in and not after.pending_in:
        store.clear_pending_in(conn, owner, peer)
    return Change(before, after, item, version)


def setup(server: Server) -> None:
    server.add_stream_feature(roster.stream_feature(ns.PRE_APPROVAL, "sub"))

    async def subscription(routed: Routed) -> bool:
        if routed.type not in TYPES:
            return False
        if routed.to is None or routed.to_bare == routed.from_.bare:
            return True  # to oneself: there is nothing to subscribe to
        if routed.origin is not None:
            await _outbound(server, routed)
            return True
        if routed.target is Target.REMOTE:
            return False  # our half is done; delivery to the other server is not ours
        await _inbound(server, routed)
        return True

    # Before features/presence.py (priority 0), which leaves these types to us.
    targets = frozenset({Target.ACCOUNT, Target.BARE, Target.FULL, Target.REMOTE})
    server.hook("presence", ANY, subscription, targets=targets, priority=10)


async def _change(server: Server, owner: JID, peer: JID, kind: str, outgoing: bool,
                  request: bytes | None = None) -> Change:
    limit = server.config.limits.roster_items
    change = await server.db.write(transition, owner.local, str(peer), kind, outgoing, request, limit)
    if change.version is not None:
        roster.push(server, owner, str(peer), change.item, change.version)
    for line in describe(owner, peer, change.before, change.after):
        log.info(line)
    return change


async def _outbound(server: Server, routed: Routed) -> None:
    assert routed.to is not None
    user, contact, kind = routed.from_.bare, routed.to.bare, routed.type or ""
    el = routed.el
    el.set("from", str(user))  # §3.1.2: the bare JID, whichever resource asked
    el.set("to", str(contact))
    change = await _change(server, user, contact, kind, outgoing=True)
    if kind == "subscribed" and not change.before.pending_in and not change.before.from_:
        return  # §3.4.1: pre-approval stays with us until the contact asks
    await server.route(el)
    if kind == "subscribed" and change.after.from_ and not change.before.from_:
        await presence.send_available(server, user, contact)  # §3.1.5
    elif kind == "unsubscribed" and change.before.from_:
        await presence.send_unavailable(server, user, contact)  # §3.2.2


async def _inbound(server: Server, routed: Routed) -> None:
    contact, user, kind = routed.to_bare, routed.from_.bare, routed.type or ""
    el = routed.el
    el.set("from", str(user))
    el.set("to", str(contact))
    request = serialize(el) if kind == "subscribe" else None
    try:
        change = await _change(server, contact, user, kind, outgoing=False, request=request)
    except NoSuchUser:
        if kind == "subscribe":  # §3.1.3: no such contact; the asker's ask is cleared
            await server.route(make("presence", to=user, from_=contact, type_="unsubscribed"))
        return
    if kind == "subscribe" and change.after.from_:
        # §3.1.3 already subscribed, or §3.4.2 pre-approved: the server answers for the contact.
        await server.route(make("presence", to=user, from_=contact, type_="subscribed"))
        await presence.send_available(server, contact, user)
        return
    if change.after != change.before:
        # Appendix A.3: only what changes the state is delivered; a repeated request is not, but
        # it replaced the stored one, which every login re-delivers until answered (§3.1.3).
        for session in server.sessions.available(contact):
            server.deliver(session, el)
    if kind == "unsubscribe" and change.before.from_:
        await presence.send_unavailable(server, contact, user)


def describe(owner: JID, peer: JID, before: State, after: State) -> list[str]:
    """Log lines for what changed in `owner`'s relation to `peer` (never any stanza content)."""
    lines = []
    if after.to != before.to:
        lines.append(f"{owner} {'subscribed to' if after.to else 'is no longer subscribed to'} {peer}")
    if after.from_ != before.from_:
        lines.append(f"{owner} {'shares' if after.from_ else 'no longer shares'} presence with {peer}")
    if after.ask and not before.ask:
        lines.append(f"{owner} asked to subscribe to {peer}")
    if after.pending_in and not before.pending_in:
        lines.append(f"{owner} has a subscription request from {peer}")
    if after.approved and not before.approved:
        lines.append(f"{owner} pre-approved {peer}")
    return lines
