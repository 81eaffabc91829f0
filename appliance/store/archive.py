"""XEP-0313 message archives (features/mam.py) and their XEP-0441 preferences.

`seq` orders an archive: it is the time the message was archived, in microseconds since the
epoch, kept strictly increasing by the one writer (features/mam.py allocates it). So a time filter,
a page and the retention cut-off are all ranges of the same index, and no query sorts. The `id`
clients see (XEP-0359 stanza-id, MAM result id) is `seq` in hexadecimal (`id_for`): it needs no
index of its own (one index fewer to update per archived row, and the most scattered one), and
says no more than the message's archive time, which MAM results carry anyway. Rows archived
before schema 8 keep their random 16-character ids, found through a partial unique index; a
hexadecimal id has fewer than 16 digits for the next 34,000 years, so the two kinds never meet.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from appliance.store.users import require_user, require_users

_COLUMNS = "seq, id, with_jid, with_resource, outgoing, stanza"


RANDOM_ID_LENGTH = 16  # ids of rows archived before schema 8: secrets.token_urlsafe(12)


def id_for(seq: int) -> str:
    return format(seq, "x")


@dataclass(frozen=True, slots=True)
class Entry:
    """One message in one user's archive, ready to insert."""
    username: str
    seq: int                 # strictly increasing across all archives, allocated by the one writer
    with_jid: str            # the other party's bare JID
    with_resource: str       # its resource ('' if none): a full-JID 'with' matches it exactly
    outgoing: bool           # the user sent it
    stanza: bytes


@dataclass(frozen=True, slots=True)
class Row:
    seq: int                 # microseconds since the epoch when archived; the archive's order
    id: str
    with_jid: str
    with_resource: str
    outgoing: bool
    stanza: bytes


@dataclass(frozen=True, slots=True)
class Filter:
    """What a query matches, as ranges of `seq` (inclusive) and an optional correspondent."""
    low: int = 0
    high: int | None = None
    with_jid: str | None = None
    with_resource: str | None = None
    seqs: tuple[int, ...] | None = None     # the 'ids' field, resolved


# ---- writing -----------------------------------------------------------------------------------------

def add_messages(conn: sqlite3.Connection, entries: list[Entry],
                 purge_before: int | None = None, purge_limit: int = 0) -> int:
    """Insert entries (one message in one or two archives) in this one transaction; every owner
    must exist (NoSuchUser rolls all of it back). Optionally purge up to `purge_limit` expired rows
    (seq < purge_before) of any user on the way. Returns how many rows were purged."""
    require_users(conn, {entry.username for entry in entries})  # before any row: nothing half-written
    conn.executemany(
        f"INSERT INTO archive ({_COLUMNS}, username) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(entry.seq, id_for(entry.seq), entry.with_jid, entry.with_resource, int(entry.outgoing),
          entry.stanza, entry.username) for entry in entries],
    )
    return purge_expired(conn, purge_before, purge_limit) if purge_before is not None else 0


def last_seq(conn: sqlite3.Connection) -> int:
    # max() of the INTEGER PRIMARY KEY is one seek to the end of the table's b-tree.
    return conn.execute("SELECT max(seq) FROM archive").fetchone()[0] or 0


def purge_expired(conn: sqlite3.Connection, before: int, limit: int) -> int:
    """Delete at most `limit` of the oldest rows (all users) archived before `before`: a range of
    the table's own key, so the cost is the rows deleted, whatever the archive's size."""
    return conn.execute(
        "DELETE FROM archive WHERE seq IN (SELECT seq FROM archive WHERE seq < ? ORDER BY seq LIMIT ?)",
        (before, limit),
    ).rowcount


def has_expired(conn: sqlite3.Connection, before: int) -> bool:
    return conn.execute("SELECT 1 FROM archive WHERE seq < ? LIMIT 1", (before,)).fetchone() is not None


# ---- reading -----------------------------------------------------------------------------------------

def seq_of(conn: sqlite3.Connection, user: str, id_: str) -> int | None:
    if len(id_) == RANDOM_ID_LENGTH:  # archived before schema 8 (length(id) = 16: the partial index)
        row = conn.execute("SELECT seq FROM archive WHERE username = ? AND id = ? AND length(id) = 16",
                           (user, id_)).fetchone()
        return row[0] if row else None
    try:
        seq = int(id_, 16)
    except ValueError:
        return None
    if id_for(seq) != id_:  # only the canonical spelling names a row ('0x1f', '1F' do not)
        return None
    row = conn.execute("SELECT seq FROM archive WHERE seq = ? AND username = ?", (seq, user)).fetchone()
    return row[0] if row else None


def page(conn: sqlite3.Connection, user: str, where: Filter, *, after: int | None = None,
         before: int | None = None, limit: int, backward: bool = False, offset: int = 0) -> list[Row]:
    """Up to `limit` rows matching `where`, strictly between `after` and `before`, oldest first.
    Backward: the last `limit` of them (still returned oldest first)."""
    sql, params = _where(user, where)
    if after is not None:
        sql += " AND seq > ?"
        params.append(after)
    if before is not None:
        sql += " AND seq < ?"
        params.append(before)
    order = "DESC" if backward else "ASC"
    rows = conn.execute(f"SELECT {_COLUMNS} FROM archive WHERE {sql} ORDER BY seq {order} LIMIT ? OFFSET ?",
                        (*params, limit, offset)).fetchall()
    found = [Row(seq, id_, jid, resource, bool(out), bytes(stanza)) for seq, id_, jid, resource, out, stanza in rows]
    return found[::-1] if backward else found


def count(conn: sqlite3.Connection, user: str, where: Filter, below: int | None = None) -> int:
    """How many rows match (those before `below` only, for RSM's index): an index-only scan."""
    sql, params = _where(user, where)
    if below is not None:
        sql += " AND seq < ?"
        params.append(below)
    return conn.execute(f"SELECT count(*) FROM archive WHERE {sql}", params).fetchone()[0]


def _where(user: str, where: Filter) -> tuple[str, list[object]]:
    # Fixed fragments only; every value is a bound parameter.
    sql, params = "username = ? AND seq >= ?", [user, where.low]
    if where.high is not None:
        sql += " AND seq <= ?"
        params.append(where.high)
    if where.with_jid is not None:
        sql += " AND with_jid = ?"
        params.append(where.with_jid)
    if where.with_resource is not None:
        sql += " AND with_resource = ?"
        params.append(where.with_resource)
    if where.seqs is not None:
        sql += f" AND seq IN ({', '.join('?' * len(where.seqs))})" if where.seqs else " AND 0"
        params.extend(where.seqs)
    return sql, params


def bounds(conn: sqlite3.Connection, user: str, low: int) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(id, seq) of the first and the last message archived at or after `low`; None if none."""
    query = "SELECT id, seq FROM archive WHERE username = ? AND seq >= ? ORDER BY seq {} LIMIT 1"
    first = conn.execute(query.format("ASC"), (user, low)).fetchone()
    if first is None:
        return None
    last = conn.execute(query.format("DESC"), (user, low)).fetchone()
    return (first[0], first[1]), (last[0], last[1])


# ---- preferences (XEP-0441) ----------------------------------------------------------------------------

def get_prefs(conn: sqlite3.Connection, user: str) -> tuple[str, list[str], list[str]] | None:
    """(default, always, never) as stored; None if the user never set any."""
    row = conn.execute("SELECT mode, always, never FROM archive_prefs WHERE username = ?", (user,)).fetchone()
    return (row[0], json.loads(row[1]), json.loads(row[2])) if row else None


def set_prefs(conn: sqlite3.Connection, user: str, default: str, always: list[str], never: list[str]) -> None:
    require_user(conn, user)
    conn.execute(
        "INSERT INTO archive_prefs (username, mode, always, never) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (username) DO UPDATE SET mode = excluded.mode, always = excluded.always,"
        " never = excluded.never",
        (user, default, json.dumps(always), json.dumps(never)),
    )
