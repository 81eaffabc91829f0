"""RFC 6121 §2: roster get, set and remove, roster pushes, and roster versioning (§2.6).

The roster version is the store's per-user counter, so "is the client up to date" is one string
comparison. Pushes go only to *interested* resources (§2.1.6): those that asked for the roster.
Removing an item also ends the subscriptions in both directions (§2.5.2); those presences go
through the router, so a local contact is updated by features/subscription.py and a remote one by
whatever delivers to other servers.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from dataclasses import dataclass

from lxml import etree

from appliance.core.router import Routed, Target
from appliance.core.server import FeatureBuilder, Server
from appliance.core.session import Session
from appliance.features import presence
from appliance.proto import ns
from appliance.proto.c2s import Stage
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID, InvalidJID
from appliance.proto.stanza import Element, iq_result, make
from appliance.store import roster as store

log = logging.getLogger("appliance.roster")

MAX_TEXT_BYTES = 1023   # a roster name or group; RFC 6121 §2.3.3 lets the server pick the limit
MAX_GROUPS = 100        # per item; a client with more is broken or hostile


def setup(server: Server) -> None:
    server.add_stream_feature(stream_feature(ns.ROSTER_VER, "ver"))

    async def roster_iq(routed: Routed) -> bool:
        if routed.type in ("result", "error"):
            return True  # a client acknowledging a roster push
        if routed.origin is None:
            raise StanzaError("forbidden", "only the account's own resources manage its roster")
        if routed.type == "get":
            return await _get(server, routed, routed.origin)
        if routed.type == "set":
            return await _set(server, routed, routed.origin)
        raise StanzaError("bad-request")

    server.hook("iq", ns.ROSTER, roster_iq, targets=frozenset({Target.ACCOUNT}))


def stream_feature(namespace: str, name: str) -> FeatureBuilder:
    """A feature advertised after authentication (RFC 6121 §2.6.1 rosterver, §3.4.1 pre-approval)."""
    def build(stage: Stage, session: Session | None) -> Element | None:
        if stage is not Stage.AUTHENTICATED:
            return None
        return etree.Element(f"{{{namespace}}}{name}", nsmap={None: namespace})
    return build


# ---- XML -----------------------------------------------------------------------------------------

def item_element(item: store.RosterItem | None, contact: str) -> Element:
    """<item/> for a result or a push; None means the item was removed (§2.5.2)."""
    el = etree.Element(f"{{{ns.ROSTER}}}item", jid=contact)
    if item is None:
        el.set("subscription", "remove")
        return el
    if item.name:
        el.set("name", item.name)
    el.set("subscription", item.subscription)
    if item.ask:
        el.set("ask", "subscribe")
    if item.approved:
        el.set("approved", "true")  # §3.4: only pre-approval sets it
    for group in item.groups:
        etree.SubElement(el, f"{{{ns.ROSTER}}}group").text = group
    return el


def _query(version: int | None) -> Element:
    query = etree.Element(f"{{{ns.ROSTER}}}query", nsmap={None: ns.ROSTER})
    if version is not None:
        query.set("ver", str(version))
    return query


def push(server: Server, user: JID, contact: str, item: store.RosterItem | None, version: int) -> None:
    """A roster push (§2.1.6) to every interested resource; 'from' left out, which means the account."""
    for session in server.sessions.of(user.bare):
        if not session.interested:
            continue
        iq = make("iq", to=session.jid, type_="set", id_=f"push-{secrets.token_hex(6)}")
        iq.append(_query(version))
        iq[0].append(item_element(item, contact))
        server.deliver(session, iq)


# ---- get (§2.2) -------------------------------------------------------------------------------------

async def _get(server: Server, routed: Routed, session: Session) -> bool:
    query = routed.payload
    assert query is not None
    if len(query):
        raise StanzaError("bad-request", "a roster get carries no items")
    session.interested = True
    version, items = server.db.read(store.get_roster, session.username)
    if query.get("ver") == str(version):
        # §2.6.3: the client's copy is current; an empty result, and pushes from now on.
        await server.reply(routed, iq_result(routed.el))
        return True
    result = _query(version)
    for item in items:
        result.append(item_element(item, item.contact))
    await server.reply(routed, iq_result(routed.el, result))
    return True


# ---- set and remove (§2.3, §2.4, §2.5) ---------------------------------------------------------------

@dataclass
class _Request:
    contact: JID
    name: str | None
    groups: list[str]
    remove: bool


def parse_set(query: Element, user: JID) -> _Request:
    """Validate a roster set as §2.3.3 asks; raises StanzaError."""
    items = [c for c in query if isinstance(c.tag, str)]
    if len(items) != 1 or items[0].tag != f"{{{ns.ROSTER}}}item":
        raise StanzaError("bad-request", "a roster set carries exactly one <item/>")
    item = items[0]
    try:
        contact = JID.parse(item.get("jid") or "")
    except InvalidJID as exc:
        raise StanzaError("jid-malformed", str(exc)) from None
    if contact.resource is not None:
        raise StanzaError("bad-request", "roster items are bare JIDs")
    if contact == user.bare:
        raise StanzaError("not-allowed", "your own JID does not go in your roster")
    remove = item.get("subscription") == "remove"  # any other value from a client is ignored (§2.1.2.5)
    name = item.get("name") or None
    if name is not None and len(name.encode()) > MAX_TEXT_BYTES:
        raise StanzaError("not-acceptable", f"the name is longer than {MAX_TEXT_BYTES} bytes")
    return _Request(contact, name, [] if remove else _groups(item), remove)


def _groups(item: Element) -> list[str]:
    groups = [g.text or "" for g in item.iter(f"{{{ns.ROSTER}}}group")]
    if len(groups) > MAX_GROUPS:
        raise StanzaError("not-acceptable", f"more than {MAX_GROUPS} groups")
    if any(not g for g in groups):
        raise StanzaError("not-acceptable", "a group needs a name")
    if any(len(g.encode()) > MAX_TEXT_BYTES for g in groups):
        raise StanzaError("not-acceptable", f"a group name is longer than {MAX_TEXT_BYTES} bytes")
    if len(set(groups)) != len(groups):
        raise StanzaError("bad-request", "the same group twice")
    return groups


async def _set(server: Server, routed: Routed, session: Session) -> bool:
    assert routed.payload is not None
    request = parse_set(routed.payload, session.jid)
    if request.remove:
        await remove(server, session.jid.bare, request.contact)
    else:
        limit = server.config.limits.roster_items
        stored, version = await server.db.write(_update, session.username, request, limit)
        push(server, session.jid.bare, str(request.contact), stored, version)
    await server.reply(routed, iq_result(routed.el))
    return True


def _update(conn: sqlite3.Connection, user: str, request: _Request, limit: int) -> tuple[store.RosterItem, int]:
    """Add or update name and groups; subscription state is the server's, never the client's (§2.1.2.5)."""
    contact = str(request.contact)
    item = store.get_item(conn, user, contact)
    if item is None:
        if store.count_items(conn, user) >= limit:
            raise StanzaError("not-allowed", f"your roster is full ({limit} contacts)")
        item = store.RosterItem(contact)
    item.name, item.groups = request.name, request.groups
    return item, store.set_item(conn, user, item)


async def remove(server: Server, user: JID, contact: JID) -> None:
    """§2.5.2: delete the item, push the removal, and end the subscriptions both ways."""
    removed = await server.db.write(_remove, user.local, str(contact))
    if removed is None:
        raise StanzaError("item-not-found", f"{contact} is not in your roster")  # §2.5.3
    item, pending_in, version = removed
    push(server, user, str(contact), None, version)
    log.info("%s removed %s from the roster", user, contact)
    if item.subscription in ("to", "both") or item.ask:
        await server.route(make("presence", to=contact, from_=user, type_="unsubscribe"))
    if item.subscription in ("from", "both"):
        await presence.send_unavailable(server, user, contact)  # §3.2.2: they stop seeing us
    if pending_in or item.subscription in ("from", "both"):
        await server.route(make("presence", to=contact, from_=user, type_="unsubscribed"))


def _remove(conn: sqlite3.Connection, user: str, contact: str) -> tuple[store.RosterItem, bool, int] | None:
    """One transaction: the item and any pending request from the contact go together."""
    item = store.get_item(conn, user, contact)
    if item is None:
        return None
    pending_in = store.clear_pending_in(conn, user, contact)
    version = store.remove_item(conn, user, contact)
    assert version is not None
    return item, pending_in, version
