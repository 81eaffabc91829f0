"""The client's local state in one SQLite file, `DATA_DIR/client.sqlite`: the account (with its
password, hence mode 0600), the XEP-0198 state for resuming, chat history, the roster; received
media as files under `DATA_DIR/media/`. Other client modules keep their own tables in the same
file through `.conn` (created with CREATE TABLE IF NOT EXISTS in their own module).

Migrations as in appliance/store/schema.py: an ordered list, applied by `PRAGMA user_version`.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from appliance.client.link import Account
from appliance.client.negotiation import SmState
from appliance.proto import ns
from appliance.proto.stanza import Element

DB_NAME = "client.sqlite"
MEDIA_DIR = "media"

MIGRATIONS: list[str] = [
    # 1: account, stream management state, history, roster.
    """
    CREATE TABLE account (
        id           INTEGER PRIMARY KEY CHECK (id = 1),   -- one account per data directory
        jid          TEXT NOT NULL,                        -- bare JID
        password     TEXT,                                 -- NULL: cleared, pair again
        host         TEXT NOT NULL,
        port         INTEGER NOT NULL,
        fingerprint  TEXT,                                 -- pinned certificate SHA-256, hex
        resource     TEXT NOT NULL
    );
    CREATE TABLE sm_state (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        sm_id     TEXT,
        inbound   INTEGER NOT NULL,
        acked     INTEGER NOT NULL,
        jid       TEXT NOT NULL
    );
    CREATE TABLE sm_unacked (
        seq     INTEGER PRIMARY KEY,                       -- oldest first
        stanza  BLOB NOT NULL
    );
    CREATE TABLE messages (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        peer       TEXT NOT NULL,                          -- bare JID of the other side
        direction  TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        body       TEXT NOT NULL,
        stamp      REAL NOT NULL,                          -- unix time
        stanza_id  TEXT
    );
    CREATE INDEX messages_by_peer ON messages(peer, id);
    CREATE TABLE roster (
        jid           TEXT PRIMARY KEY,
        name          TEXT,
        subscription  TEXT NOT NULL,
        groups        TEXT NOT NULL DEFAULT '[]'           -- JSON array
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class RosterItem:
    jid: str
    name: str | None = None
    subscription: str = "none"
    groups: tuple[str, ...] = ()


def roster_items(query: Element) -> list[RosterItem]:
    """The items of a jabber:iq:roster <query/> (a roster get's result, or a push)."""
    q = f"{{{ns.ROSTER}}}"
    return [RosterItem(item.get("jid", ""), item.get("name"), item.get("subscription", "none"),
                       tuple(g.text or "" for g in item.iterfind(q + "group")))
            for item in query.iterfind(q + "item")]


@dataclass(frozen=True)
class Message:
    id: int
    peer: str
    direction: str  # 'in' or 'out'
    body: str
    stamp: float
    stanza_id: str | None


class ClientState:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.data_dir / DB_NAME
        # Created 0600 before SQLite opens it (its -wal and -shm files copy the mode): it holds
        # the password.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        path.chmod(0o600)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self._migrate()

    def _migrate(self) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.data_dir / DB_NAME} was written by a newer client "
                                   f"(schema {version}, this one knows {SCHEMA_VERSION})")
            for script in MIGRATIONS[version:]:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    # ---- account ---------------------------------------------------------------------------------

    def load_account(self) -> Account | None:
        """The stored account, or None when there is none or its credentials were cleared."""
        row = self.conn.execute(
            "SELECT jid, password, host, port, fingerprint, resource FROM account").fetchone()
        if row is None or row[1] is None:
            return None
        return Account(*row)

    def account_jid(self) -> str | None:
        """The account's JID even after clear_credentials (to say who must pair again)."""
        row = self.conn.execute("SELECT jid FROM account").fetchone()
        return row[0] if row else None

    def save_account(self, account: Account) -> None:
        with self._transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO account (id, jid, password, host, port, fingerprint, resource)"
                " VALUES (1, ?, ?, ?, ?, ?, ?)",
                (account.jid, account.password, account.host, account.port, account.fingerprint,
                 account.resource))

    def clear_credentials(self) -> None:
        """The server refused the password: forget it and the session; keep history (and keys)."""
        with self._transaction():
            self.conn.execute("UPDATE account SET password = NULL")
            self._delete_sm()

    # ---- XEP-0198 ----------------------------------------------------------------------------------

    def save_sm(self, sm: SmState | None) -> None:
        with self._transaction():
            self._delete_sm()
            if sm is None:
                return
            self.conn.execute("INSERT INTO sm_state (id, sm_id, inbound, acked, jid) VALUES (1, ?, ?, ?, ?)",
                              (sm.id, sm.inbound, sm.acked, sm.jid))
            self.conn.executemany("INSERT INTO sm_unacked (stanza) VALUES (?)",
                                  [(data,) for data in sm.outbound_unacked])

    def load_sm(self) -> SmState | None:
        row = self.conn.execute("SELECT sm_id, inbound, acked, jid FROM sm_state").fetchone()
        if row is None:
            return None
        unacked = [bytes(r[0]) for r in self.conn.execute("SELECT stanza FROM sm_unacked ORDER BY seq")]
        return SmState(row[0], row[1], unacked, row[2], row[3])

    def _delete_sm(self) -> None:
        self.conn.execute("DELETE FROM sm_state")
        self.conn.execute("DELETE FROM sm_unacked")

    # ---- history -------------------------------------------------------------------------------------

    def add_message(self, peer: str, direction: str, body: str, stamp: float,
                    stanza_id: str | None = None) -> int:
        with self._transaction():
            cursor = self.conn.execute(
                "INSERT INTO messages (peer, direction, body, stamp, stanza_id) VALUES (?, ?, ?, ?, ?)",
                (peer, direction, body, stamp, stanza_id))
        return cursor.lastrowid or 0

    def history(self, peer: str, limit: int = 50) -> list[Message]:
        """The last `limit` messages with `peer`, oldest first."""
        rows = self.conn.execute(
            "SELECT id, peer, direction, body, stamp, stanza_id FROM messages WHERE peer = ?"
            " ORDER BY id DESC LIMIT ?", (peer, limit)).fetchall()
        return [Message(*row) for row in reversed(rows)]

    # ---- roster ---------------------------------------------------------------------------------------

    def set_roster(self, items: list[RosterItem]) -> None:
        """Replace the roster (after a full roster get)."""
        with self._transaction():
            self.conn.execute("DELETE FROM roster")
            self.conn.executemany(
                "INSERT INTO roster (jid, name, subscription, groups) VALUES (?, ?, ?, ?)",
                [(i.jid, i.name, i.subscription, json.dumps(list(i.groups))) for i in items])

    def roster(self) -> list[RosterItem]:
        rows = self.conn.execute("SELECT jid, name, subscription, groups FROM roster ORDER BY jid")
        return [RosterItem(jid, name, sub, tuple(json.loads(groups))) for jid, name, sub, groups in rows]

    # ---- media --------------------------------------------------------------------------------------

    def media_path(self, name: str) -> Path:
        """Where a received file called `name` is kept; a name from the network cannot leave the
        media directory ('../x' becomes 'x')."""
        media = self.data_dir / MEDIA_DIR
        media.mkdir(exist_ok=True, mode=0o700)
        safe = Path(name).name.lstrip(".") or "file"
        return media / safe
