"""XEP-0191 blocking command: the blocklist IQs, their pushes, and keeping blocked JIDs out.

Enforcement is one handler at the head of every message, presence and IQ chain, so nothing after
it (subscriptions, presence, carbons, archives, delivery, offline storage) ever sees a blocked
stanza. Because presence.py sends every broadcast, probe and probe answer through the router on
the user's behalf, the same handler also keeps the user's presence from blocked contacts.

Each account's blocklist is read once and kept in memory (`Blocklists`), so the check costs a set
lookup per stanza and no database read; a change forgets the cached copy.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from typing import Collection

from lxml import etree

from appliance.core.events import Event
from appliance.core.router import ANY, Routed, Target
from appliance.core.server import Server
from appliance.features import presence
from appliance.proto import ns
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID, InvalidJID
from appliance.proto.stanza import Element, iq_result, make
from appliance.store import blocking as store
from appliance.store import roster

log = logging.getLogger("appliance.blocking")

NAME = "blocking"          # Session.state key: this resource asked for the blocklist (gets pushes)
PRIORITY = 1000            # before every other handler of a stanza (subscription 10, presence 0, ...)
CACHED_ACCOUNTS = 1024     # blocklists kept in memory; the least recently used are read again
ENDS_SHARING = frozenset({"unsubscribe", "unsubscribed"})
EMPTY: frozenset[str] = frozenset()


class Blocked(StanzaError):
    """§3.3: the user tried to reach a JID they block: not-acceptable with <blocked/>."""

    def __init__(self) -> None:
        super().__init__("not-acceptable", "you have blocked this JID", type_="cancel")

    def to_element(self, client_ns: str = ns.CLIENT) -> Element:
        error = super().to_element(client_ns)
        etree.SubElement(error, f"{{{ns.BLOCKING_ERRORS}}}blocked", nsmap={None: ns.BLOCKING_ERRORS})
        return error


def matches(jid: JID, entries: Collection[str]) -> bool:
    """§6 (XEP-0016's JID matching): a bare entry covers its resources, a domain everyone there."""
    if str(jid) in entries or jid.domain in entries:
        return True
    if jid.resource is None:
        return False
    return str(jid.bare) in entries or f"{jid.domain}/{jid.resource}" in entries


class Blocklists:
    """Blocklists by username, read on first use; bounded, since stanzas to unknown local names
    must not grow it without limit."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._cache: OrderedDict[str, frozenset[str]] = OrderedDict()

    def of(self, username: str) -> frozenset[str]:
        found = self._cache.get(username)
        if found is not None:
            self._cache.move_to_end(username)
            return found
        found = frozenset(self._server.db.read(store.get_blocklist, username)) or EMPTY
        if len(self._cache) >= CACHED_ACCOUNTS:
            self._cache.popitem(last=False)
        self._cache[username] = found
        return found

    def blocks(self, username: str, jid: JID) -> bool:
        entries = self.of(username)
        return bool(entries) and matches(jid, entries)

    def forget(self, username: str) -> None:
        """After a change has committed: the next check reads the stored list again."""
        self._cache.pop(username, None)


def setup(server: Server) -> None:
    lists = Blocklists(server)
    # Our own "unavailable" sent at block time: the block it announces must not stop it.
    passing: set[Element] = set()
    server.add_disco_feature(ns.BLOCKING)

    async def command(routed: Routed) -> bool:
        if routed.type in ("result", "error"):
            return True  # a client acknowledging a push
        session = routed.origin
        if session is None:
            raise StanzaError("forbidden", "only the account's own resources manage its blocklist")
        payload = routed.payload
        assert payload is not None
        verb = etree.QName(payload).localname
        if routed.type == "get" and verb == "blocklist":
            session.state[NAME] = True  # §3.2: from now on this resource gets pushes
            items = _list_element("blocklist", sorted(lists.of(session.username)))
            await server.reply(routed, iq_result(routed.el, items))
        elif routed.type == "set" and verb == "block":
            await _block(server, lists, routed, passing)
        elif routed.type == "set" and verb == "unblock":
            await _unblock(server, lists, routed)
        else:
            raise StanzaError("bad-request")
        return True

    async def enforce(routed: Routed) -> bool:
        sender, to = routed.from_, routed.to
        assert to is not None
        if routed.el in passing or sender.bare == to.bare:
            return False
        if sender.domain == server.domain and sender.local and lists.blocks(sender.local, to):
            return _outbound(routed)
        if routed.target is not Target.REMOTE and to.local and lists.blocks(to.local, sender):
            return _inbound(routed)
        return False

    async def deleted(username: str) -> None:
        lists.forget(username)

    server.hook("iq", ns.BLOCKING, command, targets=frozenset({Target.ACCOUNT}))
    enforced = frozenset({Target.BARE, Target.FULL, Target.REMOTE})
    for kind in ("message", "presence", "iq"):
        server.hook(kind, ANY, enforce, targets=enforced, priority=PRIORITY)
    server.on(Event.USER_DELETED, deleted)


# ---- enforcement (§3.3) --------------------------------------------------------------------------------

def _outbound(routed: Routed) -> bool:
    """From the user to a JID they block. True: dropped; raises for an error to the user."""
    if routed.kind == "presence":
        # Ending a subscription reveals nothing and keeps both rosters consistent (a blocked
        # contact removed from the roster must still lose its subscription); all else is dropped.
        return routed.type not in ENDS_SHARING
    if routed.type == "error":
        # The user's client answering a blocked JID is dropped; the server's error on the user's
        # behalf (service-unavailable to a blocked sender, §3.3) goes out.
        return routed.origin is not None
    if routed.type == "result" or routed.origin is None:
        return True
    log.debug("%s tried to reach %s, whom they block", routed.from_, routed.to)
    raise Blocked()


def _inbound(routed: Routed) -> bool:
    """From a blocked JID to the user: presence silently dropped, requests and messages refused."""
    if routed.kind == "presence" or routed.type in ("result", "error"):
        return True
    log.debug("refused a %s from %s, whom %s blocks", routed.kind, routed.from_, routed.to_bare)
    raise StanzaError("service-unavailable")


# ---- the commands (§3.2 - §3.5) -----------------------------------------------------------------------------

async def _block(server: Server, lists: Blocklists, routed: Routed, passing: set[Element]) -> None:
    assert routed.origin is not None and routed.payload is not None
    user = routed.origin.jid.bare
    jids = _items(routed.payload, user)
    if not jids:
        raise StanzaError("bad-request", "a block needs at least one <item/>")
    limit = server.config.limits.blocklist_items
    try:
        added = await server.db.write(store.block, user.local, jids, limit)
    except store.BlocklistFull as exc:
        raise StanzaError("not-acceptable", str(exc)) from None
    lists.forget(routed.origin.username)
    await server.reply(routed, iq_result(routed.el))
    if added:
        log.info("%s blocked %d JID(s)", user, len(added))
        _push(server, user, "block", added)
        await _hide_presence(server, user, frozenset(added), passing)


async def _unblock(server: Server, lists: Blocklists, routed: Routed) -> None:
    assert routed.origin is not None and routed.payload is not None
    user = routed.origin.jid.bare
    jids = _items(routed.payload, user)
    if jids:
        removed = await server.db.write(store.unblock, user.local, jids)
    else:  # §3.5: no items means everyone
        removed = await server.db.write(store.unblock_all, user.local)
    lists.forget(routed.origin.username)
    await server.reply(routed, iq_result(routed.el))
    if removed:
        log.info("%s unblocked %d JID(s)", user, len(removed))
        _push(server, user, "unblock", removed if jids else [])
        await _show_presence(server, user, frozenset(removed))


def _items(payload: Element, user: JID) -> list[str]:
    """The normalised JIDs of <item/> children; raises jid-malformed or bad-request."""
    jids = []
    for item in payload:
        if not isinstance(item.tag, str):
            continue
        if item.tag != f"{{{ns.BLOCKING}}}item":
            raise StanzaError("bad-request", "only <item/> elements belong here")
        try:
            jid = JID.parse(item.get("jid") or "")
        except InvalidJID as exc:
            raise StanzaError("jid-malformed", str(exc)) from None
        if jid.bare == user:
            raise StanzaError("not-allowed", "you cannot block yourself")
        jids.append(str(jid))
    return list(dict.fromkeys(jids))


def _list_element(verb: str, jids: list[str]) -> Element:
    el = etree.Element(f"{{{ns.BLOCKING}}}{verb}", nsmap={None: ns.BLOCKING})
    for jid in jids:
        etree.SubElement(el, f"{{{ns.BLOCKING}}}item", jid=jid)
    return el


def _push(server: Server, user: JID, verb: str, jids: list[str]) -> None:
    """§3.3/§3.4: the change, to every resource of the user that has asked for the blocklist."""
    for session in server.sessions.of(user):
        if session.state.get(NAME):
            iq = make("iq", to=session.jid, type_="set", id_=f"{verb}-{secrets.token_hex(6)}")
            iq.append(_list_element(verb, jids))
            server.deliver(session, iq)


# ---- presence at block and unblock time ------------------------------------------------------------------------

def _contacts(server: Server, user: JID, entries: frozenset[str], subscriptions: tuple[str, ...]) -> list[JID]:
    """The roster contacts with one of `subscriptions` that `entries` reach; a full-JID entry
    reaches just that resource of its contact."""
    _, items = server.db.read(roster.get_roster, user.local)
    contacts = {JID.parse(item.contact) for item in items if item.subscription in subscriptions}
    hit = [contact for contact in contacts if matches(contact, entries)]
    hit += [jid for jid in map(JID.parse, entries) if jid.resource and jid.bare in contacts and jid.bare not in hit]
    return hit


async def _hide_presence(server: Server, user: JID, added: frozenset[str], passing: set[Element]) -> None:
    """§3.3: whoever could see the user (subscribers, and directed presence) now sees them leave."""
    sessions = server.sessions.available(user)
    watchers = _contacts(server, user, added, presence.SHARES_PRESENCE) if sessions else []
    for session in sessions:
        directed = [jid for jid in session.directed if matches(jid, added)]
        session.directed.difference_update(directed)
        for target in watchers + directed:
            el = make("presence", to=target, from_=session.jid, type_="unavailable")
            passing.add(el)
            try:
                await server.route(el)
            finally:
                passing.discard(el)


async def _show_presence(server: Server, user: JID, removed: frozenset[str]) -> None:
    """The reverse: subscribers see the user's current presence again (unless another entry still
    blocks them, which the enforcement sees to), and the contacts the user sees are probed."""
    if not server.sessions.available(user):
        return
    for target in _contacts(server, user, removed, presence.SHARES_PRESENCE):
        for session in server.sessions.available(user):
            if session.presence is not None:
                await server.route(presence.addressed(session.presence, target))
    for contact in dict.fromkeys(j.bare for j in _contacts(server, user, removed, presence.SEES_PRESENCE)):
        await server.route(make("presence", to=contact, from_=user, type_="probe"))
