"""The client's outgoing queue, kept in its SQLite file (ClientState.conn) so that nothing queued
is lost across reconnects or a restart of the client: `send_message` writes a stanza here first,
the runner's sender sends it, and it leaves the queue only when the server acknowledges it with
XEP-0198. Each stanza is stored as it goes on the wire, so the runner can match it against the
stream's unacknowledged stanzas (byte for byte: every message has its own id).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from lxml import etree

from appliance.proto.stanza import Element, serialize, to_stream

_TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,   -- sending order
    stanza  BLOB NOT NULL,                       -- the whole stanza, namespaces declared
    queued  REAL NOT NULL                        -- unix time
)"""


@dataclass(frozen=True)
class Outgoing:
    id: int
    stanza: bytes

    def element(self) -> Element:
        return etree.fromstring(self.stanza)

    def wire(self) -> bytes:
        """The bytes ClientStream.send writes (and keeps in sm.outbound_unacked) for it."""
        return to_stream(self.element())


class Outbox:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute(_TABLE)

    def put(self, stanza: Element) -> int:
        cursor = self.conn.execute("INSERT INTO outbox (stanza, queued) VALUES (?, ?)",
                                   (serialize(stanza), time.time()))
        return cursor.lastrowid or 0

    def pending(self) -> list[Outgoing]:
        """Everything not yet acknowledged, oldest first."""
        return [Outgoing(row[0], bytes(row[1]))
                for row in self.conn.execute("SELECT id, stanza FROM outbox ORDER BY id")]

    def remove(self, ids: list[int]) -> None:
        self.conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
