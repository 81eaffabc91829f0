"""XEP-0160 offline messages, and the durable copy of every message on its way to a local account.

A message worth keeping is written here *before* it is handed to any session (`persist`), and the
row is deleted only when a client confirms it has the message (an XEP-0198 ack, or the write to a
stream without stream management). So a message the server has acknowledged to its sender is on
disk until its recipient has it, whatever happens to the link or the process in between; what
nobody confirmed is simply still here, and goes out at the next available presence.

A full store answers the sender with an error; nothing is dropped silently. Stored messages carry
a XEP-0203 <delay/> with the time the server first received them.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from weakref import WeakKeyDictionary

import trio
from lxml import etree

from appliance.core.events import Event
from appliance.core.router import Routed
from appliance.core.server import Server
from appliance.core.session import Session
from appliance.features.presence import parse_stored
from appliance.proto import ns
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID
from appliance.proto.stanza import Element, serialize
from appliance.store import offline
from appliance.store.db import PendingWrite
from appliance.store.pending import UntilCommitted
from appliance.store.users import NoSuchUser

log = logging.getLogger("appliance.offline")

CHATSTATES = "http://jabber.org/protocol/chatstates"   # XEP-0085: worthless once stale
HINTS = "urn:xmpp:hints"                                # XEP-0334
_NOT_CONTENT = {CHATSTATES, HINTS}


def setup(server: Server) -> None:
    locks: dict[str, trio.Lock] = {}  # per user: two resources logging in at once get each message once
    # Rows a client confirmed whose DELETE rides along with the next commit (db.write_soon): one
    # transaction per message instead of two. Until it commits, they must not be delivered again.
    deleting: UntilCommitted[int] = UntilCommitted()

    def skip(id_: int) -> bool:
        """Held by a live session, or confirmed and about to be deleted."""
        return id_ in server.in_flight or deleting.waiting(id_)

    async def store(routed: Routed) -> bool:
        if routed.receipt is not None:
            return True  # written before delivery was tried: it is offline already
        return await store_message(server, routed)

    async def flush(session: Session) -> None:
        if session.priority < 0:
            return  # §XEP-0160 3: a negative priority says "not for messages to my bare JID"
        lock = locks.setdefault(session.username, trio.Lock())
        try:
            async with lock:
                await deliver_stored(server, session, skip)
        finally:
            if not lock.statistics().tasks_waiting:
                locks.pop(session.username, None)

    async def confirmed(username: str, receipts: list[int]) -> None:
        copies = _copies_of(server)
        written = [id_ for id_ in receipts if not copies.withdraw(id_)]
        if written:
            deleting.add(written, server.db.write_soon(offline.delete_messages, username, written))

    async def released(username: str) -> None:
        """A session ended holding stored messages: the account's other resources get them now."""
        for session in server.sessions.available(JID(username, server.domain)):
            await flush(session)

    server.on(Event.MESSAGE_OFFLINE, store)
    server.on(Event.PRESENCE_INITIAL, flush)
    server.on(Event.DELIVERY_CONFIRMED, confirmed)
    server.on(Event.RECEIPTS_RELEASED, released)


async def persist(server: Server, routed: Routed) -> int | None:
    """The durable copy of a message on its way to a live session; None if not worth keeping.

    The row is queued to commit with the message's archive rows (db.write_soon) and the router
    settles it before the sender's stream counts the message as handled, so what the server
    acknowledges is on disk. The recipient may get the message while the commit runs: that costs
    no fsync in the delivery path, and a recipient's ack queues its delete behind the insert, or
    withdraws the insert if no commit has taken it yet (see _Copies)."""
    if routed.receipt is None and worth_keeping(routed.el):
        routed.receipt, job = _queue_copy(server, routed)
        routed.writes.append(job)
    return routed.receipt


def worth_keeping(el: Element) -> bool:
    """A body, a subject or any payload but chat states and hints (XEP-0160 §3, XEP-0334)."""
    if el.find(f"{{{HINTS}}}no-store") is not None or el.find(f"{{{HINTS}}}no-permanent-store") is not None:
        return False
    if el.find(f"{{{HINTS}}}store") is not None:
        return True
    for child in el:
        if not isinstance(child.tag, str):
            continue
        name = etree.QName(child)
        if name.namespace == ns.CLIENT:
            if name.localname in ("body", "subject") and (child.text or "").strip():
                return True
        elif name.namespace not in _NOT_CONTENT:
            return True
    return False


async def store_message(server: Server, routed: Routed) -> bool:
    """Nobody is there: store it, and wait until it is committed, so that a failure reaches the
    sender as an error."""
    if not worth_keeping(routed.el):
        log.debug("not storing a message without content for %s", routed.to_bare)
        return True  # handled: a typing notification for nobody is simply over
    routed.receipt, job = _queue_copy(server, routed)
    try:
        await server.db.settle(job)
    except NoSuchUser:
        raise StanzaError("service-unavailable") from None
    log.debug("stored a message for %s (offline)", routed.to_bare)
    return True


class _Copies:
    """Per server: ids for new rows, how many more rows each recipient may get, and the inserts
    not committed yet.

    This process is the only one that stores messages, so ids come from memory. The room left is
    counted down per row instead of counting the user's rows for every message: the store is read
    again only when the room runs out (deleted rows only make more room, so the count is safe).

    A live recipient usually confirms a message before the lazy commit of its durable copy (its
    ack follows the delivery within milliseconds; the commit waits for company, up to half a
    second): then the insert is withdrawn and no delete is needed, so a message delivered at once
    costs the disk nothing beyond its archive rows. The id of a withdrawn copy is never stored."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.ids = itertools.count(server.db.read(offline.last_id) + 1)
        self.room: dict[str, int] = {}
        self.unwritten: UntilCommitted[int] = UntilCommitted()

    def withdraw(self, id_: int) -> bool:
        """The copy `id_` will not be written (its recipient has the message): True if its insert
        had not been taken by a commit yet, False if the row is (or will be) on disk."""
        job = self.unwritten.take(id_)
        return job is not None and self.server.db.withdraw(job)

    def take_room(self, user: str) -> bool:
        room = self.room.get(user, 0)
        if room <= 0:
            room = self.server.config.limits.offline_per_user - self.server.db.read(offline.count_messages, user)
        self.room[user] = room - 1 if room > 0 else 0
        return room > 0


_copies: WeakKeyDictionary[Server, _Copies] = WeakKeyDictionary()


def _copies_of(server: Server) -> _Copies:
    return _copies.get(server) or _copies.setdefault(server, _Copies(server))


def _queue_copy(server: Server, routed: Routed) -> tuple[int, PendingWrite]:
    """Allocate the row's id and queue its insert; StanzaError when the recipient's store is full."""
    copies = _copies_of(server)
    if not copies.take_room(routed.to_bare.local):
        log.warning("offline storage for %s is full; refusing a message", routed.to_bare)
        raise StanzaError("service-unavailable", "the recipient's offline storage is full")
    # The row keeps the stanza as it is and the time in `stamp`; the <delay/> is added when a row
    # is read back (`stamp_delay`): most rows are deleted unread once the live copy is confirmed.
    id_, now = next(copies.ids), time.time()
    job = server.db.write_soon(offline.insert_message, id_, routed.to_bare.local, serialize(routed.el), now)
    copies.unwritten.add((id_,), job)
    return id_, job


def stamp_delay(message: Element, domain: str, when: float) -> Element:
    """Add XEP-0203 <delay/> (in place); a message that was stored before keeps its first stamp."""
    for delay in message.iterfind(f"{{{ns.DELAY}}}delay"):
        if delay.get("from") == domain:
            return message
    delay = etree.SubElement(message, f"{{{ns.DELAY}}}delay", nsmap={None: ns.DELAY})
    delay.set("from", domain)
    delay.set("stamp", datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    return message


def stored_message(stanza: bytes, stamp: float, domain: str) -> Element:
    """An offline row as the element to send: parsed, with its <delay/>."""
    return stamp_delay(parse_stored(stanza), domain, stamp)


async def deliver_stored(server: Server, session: Session, skip: Callable[[int], bool]) -> None:
    """In order, waiting for room in the outbox. Rows another live session holds or a client has
    confirmed are skipped; a row is deleted when this client confirms it (see `confirmed`)."""
    await server.db.flush()  # copies still on their way to disk are rows too
    rows = server.db.read(offline.fetch_messages, session.username)
    sent = 0
    for id_, stanza, stamp in rows:
        if skip(id_):
            continue
        if not await server.deliver_patiently(session, stored_message(stanza, stamp, server.domain), receipt=id_):
            break  # the session is gone; the rest waits for the next login
        sent += 1
    if sent:
        log.info("delivered %d stored messages to %s", sent, session.jid)
