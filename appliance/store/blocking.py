"""XEP-0191 blocklists: the JIDs (bare, full or domain, normalised) each account blocks.

Every write returns what it actually changed, so the feature pushes and re-broadcasts presence
only for real changes; a JID blocked twice is stored once.
"""

from __future__ import annotations

import sqlite3

from appliance.store.users import require_user


class BlocklistFull(Exception):
    """The block would take the account past its limit; nothing of it was stored."""


def get_blocklist(conn: sqlite3.Connection, user: str) -> list[str]:
    rows = conn.execute("SELECT jid FROM blocklist WHERE username = ? ORDER BY jid", (user,))
    return [jid for (jid,) in rows]


def count_blocked(conn: sqlite3.Connection, user: str) -> int:
    return conn.execute("SELECT count(*) FROM blocklist WHERE username = ?", (user,)).fetchone()[0]


def block(conn: sqlite3.Connection, user: str, jids: list[str], limit: int) -> list[str]:
    """Add `jids`; returns those that were not blocked yet. All or nothing: raises BlocklistFull
    when the new ones would pass `limit`, and NoSuchUser for an unknown account."""
    require_user(conn, user)
    have = set(get_blocklist(conn, user))
    new = [jid for jid in dict.fromkeys(jids) if jid not in have]
    if len(have) + len(new) > limit:
        raise BlocklistFull(f"{user} may block at most {limit} JIDs")
    conn.executemany("INSERT INTO blocklist (username, jid) VALUES (?, ?)", [(user, jid) for jid in new])
    return new


def unblock(conn: sqlite3.Connection, user: str, jids: list[str]) -> list[str]:
    """Remove `jids`; returns those that were blocked. JIDs that were not are ignored."""
    removed = []
    for jid in dict.fromkeys(jids):
        if conn.execute("DELETE FROM blocklist WHERE username = ? AND jid = ?", (user, jid)).rowcount:
            removed.append(jid)
    return removed


def unblock_all(conn: sqlite3.Connection, user: str) -> list[str]:
    """Empty the blocklist; returns what it held."""
    removed = get_blocklist(conn, user)
    conn.execute("DELETE FROM blocklist WHERE username = ?", (user,))
    return removed
