"""Rosters (RFC 6121 §2) with versioning (§2.6), and pending inbound subscription requests (§3.1.3).

The roster version is a per-user counter in `users.roster_version`, bumped once per change, so a
client that presents the current version needs no roster at all.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field, replace

from appliance.store.users import NoSuchUser, require_user

SUBSCRIPTIONS = ("none", "to", "from", "both")

_COLUMNS = "contact, name, subscription, ask, approved, groups"


@dataclass
class RosterItem:
    contact: str                        # bare JID
    name: str | None = None
    subscription: str = "none"          # one of SUBSCRIPTIONS
    ask: bool = False                   # our outbound subscribe is pending
    approved: bool = False              # the contact's inbound subscription is pre-approved
    groups: list[str] = field(default_factory=list)


def _item(row: tuple) -> RosterItem:
    contact, name, subscription, ask, approved, groups = row
    return RosterItem(contact, name, subscription, bool(ask), bool(approved), json.loads(groups))


def roster_version(conn: sqlite3.Connection, user: str) -> int:
    """The current version; 0 for a user without any roster change (or without an account)."""
    row = conn.execute("SELECT roster_version FROM users WHERE username = ?", (user,)).fetchone()
    return row[0] if row else 0


def get_roster(conn: sqlite3.Connection, user: str) -> tuple[int, list[RosterItem]]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM roster_items WHERE username = ? ORDER BY contact", (user,)
    )
    items = [_item(row) for row in rows]
    return roster_version(conn, user), items


def get_item(conn: sqlite3.Connection, user: str, contact: str) -> RosterItem | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM roster_items WHERE username = ? AND contact = ?", (user, contact)
    ).fetchone()
    return _item(row) if row else None


def count_items(conn: sqlite3.Connection, user: str) -> int:
    return conn.execute("SELECT count(*) FROM roster_items WHERE username = ?", (user,)).fetchone()[0]


def set_item(conn: sqlite3.Connection, user: str, item: RosterItem) -> int:
    """Insert or replace the item; returns the roster version after the change.

    Setting an item to exactly what is stored changes nothing and keeps the version, so callers
    can skip the roster push. Raises NoSuchUser, and ValueError for a bad subscription.
    """
    if item.subscription not in SUBSCRIPTIONS:
        raise ValueError(f"subscription must be one of {SUBSCRIPTIONS}, not {item.subscription!r}")
    groups = list(dict.fromkeys(item.groups))  # a set in RFC 6121, but keep the client's order
    stored = get_item(conn, user, item.contact)
    if stored is not None and stored == replace(item, groups=groups):
        return roster_version(conn, user)
    version = _bump(conn, user)
    conn.execute(
        f"INSERT OR REPLACE INTO roster_items (username, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (user, item.contact, item.name, item.subscription, item.ask, item.approved, json.dumps(groups)),
    )
    return version


def remove_item(conn: sqlite3.Connection, user: str, contact: str) -> int | None:
    """Returns the new roster version, or None if the contact was not in the roster."""
    deleted = conn.execute(
        "DELETE FROM roster_items WHERE username = ? AND contact = ?", (user, contact)
    ).rowcount
    return _bump(conn, user) if deleted else None


def _bump(conn: sqlite3.Connection, user: str) -> int:
    updated = conn.execute(
        "UPDATE users SET roster_version = roster_version + 1 WHERE username = ?", (user,)
    ).rowcount
    if not updated:
        raise NoSuchUser(user)
    return roster_version(conn, user)


def store_pending_in(conn: sqlite3.Connection, user: str, contact: str, stanza_xml: bytes) -> None:
    """Keep an inbound subscribe until the user answers; a newer one from the contact replaces it."""
    require_user(conn, user)
    conn.execute(
        "INSERT INTO roster_pending_in (username, contact, stanza) VALUES (?, ?, ?)"
        " ON CONFLICT (username, contact) DO UPDATE SET stanza = excluded.stanza",
        (user, contact, bytes(stanza_xml)),
    )


def pending_in(conn: sqlite3.Connection, user: str) -> list[tuple[str, bytes]]:
    """(contact, stanza) pairs in the order the requests first arrived."""
    rows = conn.execute(
        "SELECT contact, stanza FROM roster_pending_in WHERE username = ? ORDER BY rowid", (user,)
    )
    return [(contact, bytes(stanza)) for contact, stanza in rows]


def clear_pending_in(conn: sqlite3.Connection, user: str, contact: str) -> bool:
    return conn.execute(
        "DELETE FROM roster_pending_in WHERE username = ? AND contact = ?", (user, contact)
    ).rowcount > 0


def get_pending_in(conn: sqlite3.Connection, user: str, contact: str) -> bytes | None:
    """The stored inbound subscribe from `contact`, or None when none is pending."""
    row = conn.execute(
        "SELECT stanza FROM roster_pending_in WHERE username = ? AND contact = ?", (user, contact)
    ).fetchone()
    return bytes(row[0]) if row else None
