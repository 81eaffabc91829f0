"""XEP-0313 Message Archive Management for one-to-one chat, with XEP-0359 stanza ids.

Archiving is an observer on the message chain (PRIORITY: after blocking and carbons, before
delivery) that never ends the chain. A chat or normal message with a body (or a XEP-0334 <store/>
hint, and without <no-store/>/<no-permanent-store/>) goes into the sender's archive when a local
session sent it, and into the recipient's when the recipient is a local account, both rows in one
write transaction that commits before delivery, so it is part of what the server acknowledges.
The recipient's copy is then stamped with <stanza-id by='recipient@domain' id='ARCHIVE-ID'/>
(after removing any with that 'by': only we may set it), and offline storage and XEP-0280
received-carbons copy that stamped element. Archive ids are 16 random URL-safe characters: the
XEP-0359 ids say nothing about the archive (see store/archive.py for the order).

A message the router sends round again (a session ended before confirming it: no origin, a
local sender) was considered when it first arrived, so it is neither archived twice nor stripped
of our own stamp. Remote senders (s2s, later) are archived on the recipient's side only, and their
stanza-ids with our users' JIDs are removed as forged.

Preferences (XEP-0441 <prefs/>) are cached per account; `default = roster` costs one roster read
per message. Retention: see `Archiver.purge_due`; queries never show expired messages anyway.

Offline messages and the archive agree: offline rows hold the stamped stanza, so clients can
dedupe by stanza-id; and a session that ran MAM queries before its initial presence does not get
the offline messages those queries already gave it (`skip_offline`; a MAY of XEP-0313's rules
for user archives). Only
ids the session was really sent count, so a message that arrives after its query still arrives.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from lxml import etree

from appliance.core.events import Event
from appliance.core.router import ANY, Routed, Target
from appliance.core.server import Server
from appliance.core.session import Session
from appliance.features import mam_query
from appliance.features.mam_query import Prefs, parse_prefs, prefs_element
from appliance.features.presence import parse_stored
from appliance.proto import ns
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID, InvalidJID
from appliance.proto.stanza import Element, iq_result, serialize
from appliance.store import archive as store
from appliance.store import offline, roster
from appliance.store.users import NoSuchUser

log = logging.getLogger("appliance.mam")

PRIORITY = 5                # below carbons (10): a sent carbon must not carry the recipient's archive id
STATE = "mam"               # Session.state key: MamState
CACHED_ACCOUNTS = 1024      # preferences kept in memory; the least recently used are read again
PURGE_INTERVAL = 300.0      # seconds between retention purges (at most; a tenth of the retention if shorter)
PURGE_BATCH = 500           # rows deleted per purge: a bounded cost inside one message's transaction
ARCHIVED_TYPES = frozenset({"chat", "normal"})
_STANZA_ID = f"{{{ns.SID}}}stanza-id"
_BODY = f"{{{ns.CLIENT}}}body"
_NO_STORE = (f"{{{ns.HINTS}}}no-store", f"{{{ns.HINTS}}}no-permanent-store")


@dataclass
class MamState:
    """Per session: archive ids sent in query results before the initial presence."""
    before_presence: bool = True
    sent: set[str] = field(default_factory=set)


class Archiver:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config.archive
        self.max_page = max(1, self.config.max_page)
        self._prefs: OrderedDict[str, Prefs] = OrderedDict()
        self._next_purge = 0.0
        # seq (and with it the id) is allocated here, before the commit: the live message carries
        # its stanza-id. This process is the archive's one writer. Read at the first message.
        self._last_seq: int | None = None
        retention = self.config.retention_days * 86_400
        self.purge_interval = min(PURGE_INTERVAL, retention / 10) if retention > 0 else PURGE_INTERVAL

    # ---- archiving -------------------------------------------------------------------------------

    async def observe(self, routed: Routed) -> bool:
        if (routed.type or "normal") not in ARCHIVED_TYPES:
            return False
        owner_in = self._recipient(routed)
        owner_out = routed.origin.username if routed.origin is not None else None
        if owner_in is None and owner_out is None:
            return False
        if owner_in is not None:
            strip_stanza_ids(routed.el, str(routed.to_bare))
        if not archivable(routed.el):
            return False
        now_us = time.time_ns() // 1000
        entries = self._entries(routed, owner_out, owner_in, now_us)
        if entries:
            self._write(routed, entries, now_us)
            incoming = next((e for e in entries if e.username == owner_in), None)
            if incoming is not None:
                stamp_stanza_id(routed.el, str(routed.to_bare), store.id_for(incoming.seq))
        return False

    def _recipient(self, routed: Routed) -> str | None:
        """The local account whose archive gets the incoming copy, if any."""
        if routed.target is Target.REMOTE:
            return None
        if routed.origin is None and routed.from_.domain == self.server.domain and routed.from_.local:
            return None  # a local user's message going round again: it was handled the first time
        return routed.to_bare.local

    def _entries(self, routed: Routed, owner_out: str | None, owner_in: str | None,
                 now_us: int) -> list[store.Entry]:
        stanza = serialize(routed.el)
        entries = []
        if owner_in is not None and self.wants(owner_in, routed.from_):
            entries.append(self._entry(owner_in, routed.from_, False, stanza, now_us))
        # To oneself (another resource, or no 'to'): one row, the incoming one (an archive holds a
        # message once).
        if owner_out is not None and owner_out != owner_in and routed.to is not None \
                and self.wants(owner_out, routed.to):
            entries.append(self._entry(owner_out, routed.to, True, stanza, now_us))
        return entries

    def _entry(self, user: str, other: JID, outgoing: bool, stanza: bytes, now_us: int) -> store.Entry:
        if self._last_seq is None:
            self._last_seq = self.server.db.read(store.last_seq)
        self._last_seq = seq = max(now_us, self._last_seq + 1)
        return store.Entry(user, seq, str(other.bare), other.resource or "", outgoing, stanza)

    def wants(self, user: str, other: JID) -> bool:
        rule = self.prefs(user).rule(other)
        if rule == "roster":
            return self.server.db.read(roster.get_item, user, str(other.bare)) is not None
        return rule == "always"

    def _write(self, routed: Routed, entries: list[store.Entry], now_us: int) -> None:
        """Queue the archive rows to commit with the message's durable copy (one transaction, not
        two); the router settles them before the sender's stream counts the message as handled."""
        routed.writes.append(self.server.db.write_soon(self._archive, entries, self.purge_due(now_us)))

    def _archive(self, conn: sqlite3.Connection, entries: list[store.Entry], purge_before: int | None) -> None:
        """On the writer thread. A message to an unknown account archives nothing (delivery
        answers it with an error)."""
        try:
            purged = store.add_messages(conn, entries, purge_before, PURGE_BATCH)
        except NoSuchUser:  # raised before any row is written
            return
        if purged >= PURGE_BATCH:
            self._next_purge = 0.0  # more expired rows wait: purge again with the next message
        if purged:
            log.info("deleted %d archived messages older than %s days", purged, self.config.retention_days)

    # ---- retention -------------------------------------------------------------------------------

    def cutoff(self, now_us: int | None = None) -> int:
        """The oldest archive time (µs) still kept; 0 when messages are kept for ever."""
        if self.config.retention_days <= 0:
            return 0
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        return max(0, now_us - int(self.config.retention_days * 86_400_000_000))

    def purge_due(self, now_us: int) -> int | None:
        """There is no background task for features, so expired rows are deleted lazily: at most
        once per PURGE_INTERVAL, PURGE_BATCH of the oldest rows of every user, inside the write
        that archives a message (no extra transaction), and again right away while a batch came
        back full. A query purges too (`purge_for_query`). Returns the cut-off to purge before, or
        None when no purge is due."""
        cutoff = self.cutoff(now_us)
        if not cutoff or time.monotonic() < self._next_purge:
            return None
        self._next_purge = time.monotonic() + self.purge_interval
        return cutoff

    async def purge_for_query(self) -> None:
        """A query purges too when due, so an idle server also sheds what it should not keep."""
        now_us = time.time_ns() // 1000
        cutoff = self.cutoff(now_us)
        if cutoff and time.monotonic() >= self._next_purge and self.server.db.read(store.has_expired, cutoff):
            self._next_purge = time.monotonic() + self.purge_interval
            purged = await self.server.db.write(store.purge_expired, cutoff, PURGE_BATCH)
            if purged >= PURGE_BATCH:
                self._next_purge = 0.0

    # ---- preferences -------------------------------------------------------------------------------

    def prefs(self, user: str) -> Prefs:
        cached = self._prefs.get(user)
        if cached is not None:
            self._prefs.move_to_end(user)
            return cached
        stored = self.server.db.read(store.get_prefs, user)
        prefs = Prefs(stored[0], frozenset(stored[1]), frozenset(stored[2])) if stored else Prefs(self.config.default)
        self._remember(user, prefs)
        return prefs

    def _remember(self, user: str, prefs: Prefs) -> None:
        self._prefs[user] = prefs
        self._prefs.move_to_end(user)
        while len(self._prefs) > CACHED_ACCOUNTS:
            self._prefs.popitem(last=False)

    async def prefs_iq(self, routed: Routed, session: Session) -> None:
        user = session.username
        if routed.type == "set":
            prefs = parse_prefs(routed.payload)  # type: ignore[arg-type]
            await self.server.db.write(store.set_prefs, user, prefs.default, sorted(prefs.always), sorted(prefs.never))
            self._remember(user, prefs)
            log.debug("%s set archiving preferences (default %s)", user, prefs.default)
        await self.server.reply(routed, iq_result(routed.el, prefs_element(self.prefs(user))))

    def forget(self, user: str) -> None:
        self._prefs.pop(user, None)

    # ---- offline messages ----------------------------------------------------------------------------

    async def skip_offline(self, session: Session) -> None:
        """Before offline.py's flush (PRESENCE_INITIAL): drop the offline rows this session already
        got as MAM results. Rows another live session holds are left to that session."""
        state = session.state.setdefault(STATE, MamState())
        state.before_presence = False
        sent, state.sent = state.sent, set()
        if not sent:
            return
        bare = str(session.jid.bare)
        await self.server.db.flush()
        rows = self.server.db.read(offline.fetch_messages, session.username)
        doomed = [id_ for id_, stanza, _ in rows
                  if id_ not in self.server.in_flight and stanza_id_of(parse_stored(stanza), bare) in sent]
        if doomed:
            await self.server.db.write(offline.delete_messages, session.username, doomed)
            log.info("%s had %d offline messages from its archive query already", session.jid, len(doomed))


def setup(server: Server) -> None:
    if not server.config.archive.enabled:
        return
    archiver = Archiver(server)
    for feature in (ns.MAM, f"{ns.MAM}#extended", ns.SID):
        server.add_disco_feature(feature, server=False, account=True)

    async def iq(routed: Routed) -> bool:
        if routed.type in ("result", "error"):
            return False
        session = routed.origin
        if routed.target is not Target.ACCOUNT or session is None:
            raise StanzaError("forbidden", "an archive is only for its own account")
        name = etree.QName(routed.payload).localname  # type: ignore[arg-type]
        if name == "prefs" and routed.type in ("get", "set"):
            await archiver.prefs_iq(routed, session)
        elif name == "query" and routed.type == "set":
            await server.db.flush()  # a message the client just got live is in its archive too
            await archiver.purge_for_query()
            sent = await mam_query.answer(server, routed, session, archiver.cutoff(), archiver.max_page)
            state = session.state.setdefault(STATE, MamState())
            if state.before_presence and session.presence is None:
                state.sent.update(sent)
        elif name == "query" and routed.type == "get":
            await server.reply(routed, iq_result(routed.el, mam_query.form()))
        elif name == "metadata" and routed.type == "get":
            await mam_query.metadata(server, routed, session, archiver.cutoff())
        else:
            raise StanzaError("bad-request")
        return True

    async def deleted(username: str) -> None:
        archiver.forget(username)  # the rows went with the account (ON DELETE CASCADE)

    targets = frozenset({Target.ACCOUNT, Target.BARE, Target.FULL, Target.REMOTE})
    server.hook("message", ANY, archiver.observe, targets=targets, priority=PRIORITY)
    server.hook("iq", ns.MAM, iq, targets=frozenset({Target.ACCOUNT, Target.BARE}))
    server.on(Event.PRESENCE_INITIAL, archiver.skip_offline, priority=10)  # offline.py's flush is 0
    server.on(Event.USER_DELETED, deleted)


# ---- stanzas ----------------------------------------------------------------------------------------

def archivable(el: Element) -> bool:
    """XEP-0313's user archives: chat and normal messages with a body; XEP-0334: <store/> asks
    for one without, <no-store/> and <no-permanent-store/> forbid it."""
    if any(el.find(tag) is not None for tag in _NO_STORE):
        return False
    return el.find(_BODY) is not None or el.find(f"{{{ns.HINTS}}}store") is not None


def strip_stanza_ids(el: Element, by: str) -> None:
    """XEP-0359's business rules: a stanza-id claiming to be by this archive did not come from us."""
    for found in el.findall(_STANZA_ID):
        if _same_jid(found.get("by"), by):
            el.remove(found)


_STAMP = etree.Element(_STANZA_ID, nsmap={None: ns.SID})


def stamp_stanza_id(el: Element, by: str, id_: str) -> None:
    # First child, not last: order means nothing in XML, but tests and simple clients that read a
    # message "up to </body>" should still get the whole stanza. (A copy of a ready element costs
    # half of building one with its namespace map.)
    stamp = _STAMP.__copy__()
    stamp.set("by", by)
    stamp.set("id", id_)
    el.insert(0, stamp)


def stanza_id_of(el: Element, by: str) -> str | None:
    found = next((s for s in el.iterfind(_STANZA_ID) if s.get("by") == by), None)
    return found.get("id") if found is not None else None


def _same_jid(text: str | None, jid: str) -> bool:
    if text is None:
        return False
    try:
        return str(JID.parse(text)) == jid
    except InvalidJID:
        return False

