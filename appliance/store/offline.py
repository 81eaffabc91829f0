"""Offline message storage (XEP-0160): stanzas kept for an account until its next available presence."""

from __future__ import annotations

import sqlite3

from appliance.store.users import NoSuchUser


class OfflineFull(Exception):
    """The user already has `limit` stored messages; the sender gets an error, nothing is dropped."""


def store_message(conn: sqlite3.Connection, user: str, stanza_xml: bytes, stamp: float, limit: int) -> int:
    """Store one message; returns its id. Raises OfflineFull, or NoSuchUser for an unknown account."""
    if count_messages(conn, user) >= limit:
        raise OfflineFull(f"{user} has {limit} offline messages already")
    return insert_message(conn, None, user, stanza_xml, stamp)


def insert_message(conn: sqlite3.Connection, id_: int | None, user: str, stanza_xml: bytes, stamp: float) -> int:
    """Store one message, unchecked against the limit; returns its id. The caller may allocate the
    id (`last_id` + 1 onwards) to hand out its receipt before the row is committed; None lets
    SQLite choose. NoSuchUser for an unknown account."""
    try:
        cursor = conn.execute("INSERT INTO offline_messages (id, username, stamp, stanza) VALUES (?, ?, ?, ?)",
                              (id_, user, stamp, bytes(stanza_xml)))
    except sqlite3.IntegrityError:  # the foreign key: ids are never reused (see last_id)
        raise NoSuchUser(user) from None
    return cursor.lastrowid


def last_id(conn: sqlite3.Connection) -> int:
    """The highest id ever used, deleted rows included (AUTOINCREMENT keeps it in sqlite_sequence)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'offline_messages'").fetchone()
    top = conn.execute("SELECT max(id) FROM offline_messages").fetchone()[0]
    return max(row[0] if row else 0, top or 0)


def fetch_messages(conn: sqlite3.Connection, user: str) -> list[tuple[int, bytes, float]]:
    """(id, stanza, stamp), oldest first. Delete them with delete_messages once delivered."""
    rows = conn.execute(
        "SELECT id, stanza, stamp FROM offline_messages WHERE username = ? ORDER BY id", (user,)
    )
    return [(id_, bytes(stanza), stamp) for id_, stanza, stamp in rows]


def delete_messages(conn: sqlite3.Connection, user: str, ids: list[int]) -> None:
    # One statement per id: an IN (...) list could pass SQLite's bound-variable limit.
    conn.executemany(
        "DELETE FROM offline_messages WHERE username = ? AND id = ?", [(user, id_) for id_ in ids]
    )


def count_messages(conn: sqlite3.Connection, user: str) -> int:
    return conn.execute("SELECT count(*) FROM offline_messages WHERE username = ?", (user,)).fetchone()[0]
