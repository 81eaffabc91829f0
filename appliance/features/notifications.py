"""Notifications: "door open", "order 42 ready" pushed to people's phones as standard headlines.

`send_notification` (called by the HTTP API, the admin page and `appliance notify`) validates a
request, fixes its recipients at that moment and stores the notification with one delivery row
per recipient in one transaction; then every available session of each recipient gets a
`<message type='headline'>` (title as subject, body, link as XEP-0066 out-of-band data).

Delivered means the recipient's client has it: the stanza travels with an OwnedReceipt, and the
client's XEP-0198 ack (or, without stream management, the write) marks the row. A session that
ends without acknowledging it leaves the row pending: the user's other sessions get it again, or
the next session that sends its initial presence, until it expires. A duplicate is possible only
when an ack was lost, as for offline messages. Headlines are not archived (MAM) nor carbon-copied:
they are delivered here, not routed. XEP-0352 holds headlines back for an inactive phone; one of
priority high or urgent is marked to wake it (features/csi.py).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from lxml import etree

from appliance.core.events import Event
from appliance.core.server import Server
from appliance.core.session import OwnedReceipt, Session
from appliance.proto import ns
from appliance.config import Notifications
from appliance.proto.jid import JID, InvalidJID
from appliance.proto.stanza import Element, make, sub
from appliance.store import groups, users
from appliance.store import notifications as store
from appliance.store.pending import UntilCommitted
from appliance.store.notifications import StoredNotification

log = logging.getLogger("appliance.notifications")
OWNER = "notification"
AUDIENCE_KINDS = ("users", "group", "everyone", "online")
PRIORITIES = ("low", "normal", "high", "urgent")
WAKING = ("high", "urgent")   # priorities that wake an inactive (XEP-0352) client at once
MAX_LINK_CHARS = 2000
# Characters XML 1.0 cannot carry (and lone surrogates, which JSON can): refused, not mangled.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Audience:
    kind: str                      # one of AUDIENCE_KINDS
    names: tuple[str, ...] = ()    # usernames (kind "users") or the one group name (kind "group")


@dataclass(frozen=True)
class NotificationRequest:
    title: str
    body: str = ""
    link: str | None = None        # http(s) URL, sent as XEP-0066 out-of-band data
    priority: str = "normal"       # low, normal, high, urgent
    ttl_seconds: float | None = None   # None: [notifications] default_ttl_hours
    audience: Audience = Audience("everyone")
    sender: str = ""               # API key name, admin JID or "cli", for the record


class NotificationRejected(ValueError):
    """Bad request: str() is the reason for the client; `.status` 400 (invalid), 404 (unknown
    user or group), 413 (too large) or 422."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class DeliveryStatus:
    id: int
    created: float
    expires: float | None
    title: str
    priority: str
    audience: Audience
    recipients: int
    delivered: int
    pending: int        # recipients - delivered
    expired: bool


def setup(server: Server) -> None:
    marks = _Marks(server)

    async def login(session: Session) -> None:
        if session.priority >= 0:
            await _deliver_pending(server, session, marks.skip)

    async def confirmed(username: str, receipts: list[OwnedReceipt]) -> None:
        marks.add([(r.id, username) for r in receipts if r.owner == OWNER])

    async def released(username: str, receipts: list[OwnedReceipt] | None = None) -> None:
        """A session ended holding notifications: the user's other sessions get them now."""
        if receipts is None or any(r.owner == OWNER for r in receipts):
            for session in server.sessions.available(JID(username, server.domain)):
                await login(session)

    server.on(Event.PRESENCE_INITIAL, login)
    server.on(Event.OWNED_CONFIRMED, confirmed)
    server.on(Event.OWNED_RELEASED, released)
    server.on(Event.RECEIPTS_RELEASED, released)


class _Marks:
    """Confirmed deliveries whose mark rides along with the next commit (db.write_soon: one write
    for a batch of acks). Until it has committed, a pending row read from the store must not go
    out again (store/pending.py)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.marking: UntilCommitted[tuple[int, str]] = UntilCommitted()

    def add(self, pairs: list[tuple[int, str]]) -> None:
        if pairs:
            self.marking.add(pairs, self.server.db.write_soon(store.mark_delivered, pairs, time.time()))

    def skip(self, notification_id: int, username: str) -> bool:
        """Held by a live session, or confirmed and being marked."""
        return (OwnedReceipt(OWNER, notification_id, username) in self.server.in_flight
                or self.marking.waiting((notification_id, username)))


async def send_notification(server: Server, request: NotificationRequest) -> DeliveryStatus:
    """Validate, store with its recipients fixed now, and queue to every available session of them.
    NotificationRejected (with .status) for a bad request."""
    now = time.time()
    note = validated(server.config.notifications, server.domain, request, now)
    audience = audience_from_json(note.audience)
    online = _online_users(server) if audience.kind == "online" else []
    note_id, recipients = await server.db.write(_store, note, audience, online)
    note = replace(note, id=note_id)
    for username in recipients:
        # Push (XEP-0357) wakes the phones of recipients whose sessions all sleep or are gone.
        await server.emit(Event.NOTIFICATION_SENT, username, _deliver_live(server, note, username))
    log.info("notification %d (%s, from %s) to %d recipients", note_id, note.priority,
             note.sender or "?", len(recipients))
    return _status(note, len(recipients), 0, now)


def delivery_status(server: Server, notification_id: int) -> DeliveryStatus | None:
    counts = server.db.read(store.counted, notification_id)
    return _status(counts.notification, counts.recipients, counts.delivered, time.time()) if counts else None


def recent_notifications(server: Server, limit: int = 50) -> list[DeliveryStatus]:
    now = time.time()
    return [_status(c.notification, c.recipients, c.delivered, now) for c in server.db.read(store.recent, limit)]


def validated(settings: Notifications, domain: str, request: NotificationRequest, now: float) -> StoredNotification:
    """The row to store (id 0 until it is), or NotificationRejected saying what is wrong."""
    title, body = _text("title", request.title, settings.max_title_chars), _text("body", request.body,
                                                                                 settings.max_body_chars)
    if not title.strip():
        raise NotificationRejected("a notification needs a title")
    if request.priority not in PRIORITIES:
        raise NotificationRejected(f"priority must be one of {', '.join(PRIORITIES)}")
    ttl = settings.default_ttl_hours * 3600 if request.ttl_seconds is None else request.ttl_seconds
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= settings.max_ttl_days * 86400:
        raise NotificationRejected(f"ttl must be a number of seconds above 0 and at most "
                                   f"{settings.max_ttl_days:g} days ({settings.max_ttl_days * 86400:g} s)")
    audience = json.dumps(audience_json(_checked_audience(request.audience, domain)))
    return StoredNotification(0, now, now + ttl, title, body, _checked_link(request.link), request.priority,
                              audience, request.sender)


def _text(field: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise NotificationRejected(f"{field} must be a string")
    if len(value) > limit:
        raise NotificationRejected(f"{field} is longer than {limit} characters", 413)
    if _NOT_XML.search(value):
        raise NotificationRejected(f"{field} contains control characters XMPP cannot carry")
    return value


def _checked_link(link: object) -> str | None:
    if link is None or link == "":
        return None
    text = _text("link", link, MAX_LINK_CHARS)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in text):
        raise NotificationRejected("link must be an http:// or https:// URL")
    return text


def _checked_audience(audience: Audience, domain: str) -> Audience:
    if audience.kind not in AUDIENCE_KINDS:
        raise NotificationRejected(f"the audience must be one of {', '.join(AUDIENCE_KINDS)}")
    if audience.kind == "users":
        if not audience.names:
            raise NotificationRejected("no users given")
        return Audience("users", tuple(dict.fromkeys(_username(name, domain) for name in audience.names)))
    if audience.kind == "group":
        if len(audience.names) != 1 or not isinstance(audience.names[0], str) or not audience.names[0]:
            raise NotificationRejected("a group audience names exactly one group")
        return audience
    return Audience(audience.kind)


def _username(name: object, domain: str) -> str:
    """A user name or bare JID on this domain, as the localpart accounts are stored under."""
    if not isinstance(name, str):
        raise NotificationRejected("user names must be strings")
    try:
        jid = JID.parse(name if "@" in name else f"{name}@{domain}")
    except InvalidJID as exc:
        raise NotificationRejected(f"bad user name {name!r}: {exc}") from None
    if jid.local is None or jid.resource is not None or jid.domain != domain:
        raise NotificationRejected(f"{name!r} is not a user of {domain}", 404)
    return jid.local


def audience_json(audience: Audience) -> dict[str, object]:
    """The API's "to" object for an audience."""
    if audience.kind == "users":
        return {"users": list(audience.names)}
    if audience.kind == "group":
        return {"group": audience.names[0]}
    return {audience.kind: True}


def audience_from_json(text: str) -> Audience:
    data = json.loads(text)
    if "users" in data:
        return Audience("users", tuple(data["users"]))
    if "group" in data:
        return Audience("group", (data["group"],))
    return Audience(next(iter(data)))


def _status(note: StoredNotification, recipients: int, delivered: int, now: float) -> DeliveryStatus:
    return DeliveryStatus(note.id, note.created, note.expires, note.title, note.priority,
                          audience_from_json(note.audience), recipients, delivered, recipients - delivered,
                          expired=note.expires is not None and note.expires <= now)


def _online_users(server: Server) -> list[str]:
    return sorted({s.username for s in server.sessions.all() if s.available})


def _store(conn: sqlite3.Connection, note: StoredNotification, audience: Audience, online: list[str]) -> tuple[int, list[str]]:
    """In the write transaction: resolve the audience to accounts and store it all."""
    recipients = _recipients(conn, audience, online)
    return store.insert_notification(conn, note, recipients), recipients


def _recipients(conn: sqlite3.Connection, audience: Audience, online: list[str]) -> list[str]:
    if audience.kind == "users":
        unknown = [name for name in audience.names if not users.user_exists(conn, name)]
        if unknown:
            raise NotificationRejected(f"no such user: {', '.join(unknown)}", 404)
        return list(dict.fromkeys(audience.names))
    if audience.kind == "group":
        members = groups.group_members(conn, audience.names[0])
        if members is None:
            raise NotificationRejected(f"no such group: {audience.names[0]}", 404)
        return members
    accounts = users.list_users(conn)
    if audience.kind == "online":
        present = set(accounts)  # an account deleted meanwhile gets nothing
        return [name for name in online if name in present]
    return accounts


def _deliver_live(server: Server, note: StoredNotification, username: str) -> Element:
    """Queue to the user's available sessions; the stanza, for whoever else wants to know."""
    receipt = OwnedReceipt(OWNER, note.id, username)
    stanza = notification_stanza(note, username, server.domain)
    for session in server.sessions.available(JID(username, server.domain)):
        # A session whose login raced this send may already hold it (see _deliver_pending).
        if session.priority >= 0 and not (receipt in server.in_flight and receipt in session.receipts.values()):
            server.deliver(session, stanza, receipt)
    return stanza


async def _deliver_pending(server: Server, session: Session, skip: Callable[[int, str], bool]) -> None:
    """What the user has not acknowledged and has not expired, oldest first; rows another live
    session holds, or whose ack is being written, are skipped."""
    sent = 0
    for note in server.db.read(store.pending_for, session.username, time.time()):
        if skip(note.id, session.username):
            continue
        stanza = notification_stanza(note, session.username, server.domain)
        if not await server.deliver_patiently(session, stanza, OwnedReceipt(OWNER, note.id, session.username)):
            break  # the session is gone; the rest waits for the next one
        sent += 1
    if sent:
        log.info("delivered %d pending notifications to %s", sent, session.jid)


def notification_stanza(note: StoredNotification, username: str, domain: str) -> Element:
    """The headline every client shows: subject = title, body (the title when there is none, and
    the link at its end), the link as XEP-0066 data, and our id/priority marker."""
    message = make("message", to=f"{username}@{domain}", from_=domain, type_="headline", id_=f"notification-{note.id}")
    sub(message, f"{{{ns.CLIENT}}}subject", note.title)
    text = note.body or note.title
    sub(message, f"{{{ns.CLIENT}}}body", f"{text}\n{note.link}" if note.link else text)
    if note.link:
        oob = etree.SubElement(message, f"{{{ns.OOB}}}x", nsmap={None: ns.OOB})
        etree.SubElement(oob, f"{{{ns.OOB}}}url").text = note.link
    marker = etree.SubElement(message, f"{{{ns.NOTIFICATION}}}notification", nsmap={None: ns.NOTIFICATION})
    marker.set("id", str(note.id))
    marker.set("priority", note.priority)
    if note.priority in WAKING:
        marker.set("wake", "true")
    return message

