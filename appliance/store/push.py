"""XEP-0357 push registrations: where to send a push for a user's device (features/push.py)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Registration:
    username: str
    service: str                  # the app server's JID
    node: str
    options: dict[str, list[str]]   # publish-options form fields, sent with every push
    include_body: bool


class TooManyRegistrations(Exception):
    """The account has `[push] max_registrations_per_user` already."""


def enable(conn: sqlite3.Connection, username: str, service: str, node: str,
           options: dict[str, list[str]], include_body: bool, now: float, limit: int) -> None:
    """Add or replace one registration; a new one beyond `limit` raises TooManyRegistrations."""
    others = conn.execute("SELECT COUNT(*) FROM push_registrations WHERE username = ? AND NOT"
                          " (service = ? AND node = ?)", (username, service, node)).fetchone()[0]
    if others >= limit:
        raise TooManyRegistrations(f"at most {limit} push registrations per account")
    conn.execute("INSERT OR REPLACE INTO push_registrations (username, service, node, options,"
                 " include_body, created) VALUES (?, ?, ?, ?, ?, ?)",
                 (username, service, node, json.dumps(options), int(include_body), now))


def disable(conn: sqlite3.Connection, username: str, service: str, node: str | None = None) -> int:
    """Remove one registration, or all of `service`'s when node is None; returns how many."""
    if node is None:
        cursor = conn.execute("DELETE FROM push_registrations WHERE username = ? AND service = ?",
                              (username, service))
    else:
        cursor = conn.execute("DELETE FROM push_registrations WHERE username = ? AND service = ?"
                              " AND node = ?", (username, service, node))
    return cursor.rowcount


def registrations(conn: sqlite3.Connection, username: str) -> list[Registration]:
    rows = conn.execute("SELECT service, node, options, include_body FROM push_registrations"
                        " WHERE username = ? ORDER BY created", (username,)).fetchall()
    return [Registration(username, service, node, json.loads(options), bool(body))
            for service, node, options, body in rows]
