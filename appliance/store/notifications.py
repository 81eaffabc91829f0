"""Notifications and their per-recipient deliveries in SQLite (schema migration 6).

A notification and all its delivery rows are written in one transaction (`insert_notification`),
so its recipient count never changes afterwards; a row's `delivered` is set once, when the
recipient's client acknowledged the stanza (`mark_delivered`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredNotification:
    id: int
    created: float
    expires: float | None
    title: str
    body: str
    link: str | None
    priority: str
    audience: str          # JSON, as asked for
    sender: str


@dataclass(frozen=True)
class Counts:
    notification: StoredNotification
    recipients: int
    delivered: int


_COLUMNS = "n.id, n.created, n.expires, n.title, n.body, n.link, n.priority, n.audience, n.sender"
_COUNTED = (f"SELECT {_COLUMNS}, count(d.username), count(d.delivered) FROM notifications n "
            "LEFT JOIN notification_deliveries d ON d.notification_id = n.id")


def insert_notification(conn: sqlite3.Connection, note: StoredNotification, recipients: list[str]) -> int:
    """Store `note` (its id is ignored: a new one is allocated and returned) and one pending
    delivery per recipient."""
    cursor = conn.execute(
        "INSERT INTO notifications (created, expires, title, body, link, priority, audience, sender) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (note.created, note.expires, note.title, note.body, note.link, note.priority, note.audience, note.sender))
    notification_id = cursor.lastrowid
    assert notification_id is not None
    conn.executemany("INSERT INTO notification_deliveries (notification_id, username) VALUES (?, ?)",
                     ((notification_id, username) for username in recipients))
    return notification_id


def mark_delivered(conn: sqlite3.Connection, deliveries: list[tuple[int, str]], when: float) -> None:
    """(notification id, username) pairs the clients have; the first acknowledgement counts."""
    conn.executemany("UPDATE notification_deliveries SET delivered = ? "
                     "WHERE notification_id = ? AND username = ? AND delivered IS NULL",
                     ((when, notification_id, username) for notification_id, username in deliveries))


def pending_for(conn: sqlite3.Connection, username: str, now: float) -> list[StoredNotification]:
    """What `username` has not acknowledged yet and has not expired, oldest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id "
        "WHERE d.username = ? AND d.delivered IS NULL AND (n.expires IS NULL OR n.expires > ?) ORDER BY n.id",
        (username, now))
    return [StoredNotification(*row) for row in rows]


def counted(conn: sqlite3.Connection, notification_id: int) -> Counts | None:
    row = conn.execute(f"{_COUNTED} WHERE n.id = ? GROUP BY n.id", (notification_id,)).fetchone()
    return _counts(row) if row else None


def recent(conn: sqlite3.Connection, limit: int) -> list[Counts]:
    """The newest `limit` notifications, newest first."""
    rows = conn.execute(f"{_COUNTED} WHERE n.id IN (SELECT id FROM notifications ORDER BY id DESC LIMIT ?) "
                        "GROUP BY n.id ORDER BY n.id DESC", (limit,))
    return [_counts(row) for row in rows]


def _counts(row: tuple) -> Counts:
    return Counts(StoredNotification(*row[:9]), recipients=row[9], delivered=row[10])
