"""XEP-0163 personal eventing storage: each account's PEP nodes, their configuration and items.

Plain functions of a connection (features/pep.py calls them through `server.db`). Items keep
their payload as serialised XML; `seq` orders them, newest highest. Nodes and items go with the
account (ON DELETE CASCADE from `users`).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

ACCESS_MODELS = ("presence", "open", "whitelist")


@dataclass(frozen=True)
class NodeConfig:
    access_model: str = "presence"
    persist_items: bool = True
    max_items: int = 1

    @property
    def kept(self) -> int:
        """How many items the node keeps: without persistence only the last one (it is still
        sent to contacts that come online, XEP-0163 §6.2)."""
        return self.max_items if self.persist_items else 1


@dataclass(frozen=True)
class Item:
    id: str
    payload: bytes
    stamp: float


def get_node(conn: sqlite3.Connection, username: str, node: str) -> NodeConfig | None:
    row = conn.execute("SELECT access_model, persist_items, max_items FROM pep_nodes"
                       " WHERE username = ? AND node = ?", (username, node)).fetchone()
    return NodeConfig(row[0], bool(row[1]), row[2]) if row else None


def list_nodes(conn: sqlite3.Connection, username: str) -> list[tuple[str, NodeConfig]]:
    rows = conn.execute("SELECT node, access_model, persist_items, max_items FROM pep_nodes"
                        " WHERE username = ? ORDER BY node", (username,))
    return [(row[0], NodeConfig(row[1], bool(row[2]), row[3])) for row in rows]


def count_nodes(conn: sqlite3.Connection, username: str) -> int:
    return conn.execute("SELECT count(*) FROM pep_nodes WHERE username = ?", (username,)).fetchone()[0]


def create_node(conn: sqlite3.Connection, username: str, node: str, config: NodeConfig) -> None:
    conn.execute("INSERT INTO pep_nodes (username, node, access_model, persist_items, max_items, created)"
                 " VALUES (?, ?, ?, ?, ?, ?)",
                 (username, node, config.access_model, int(config.persist_items), config.max_items, time.time()))


def configure_node(conn: sqlite3.Connection, username: str, node: str, config: NodeConfig) -> bool:
    """Change a node's configuration; items beyond what it now keeps are dropped."""
    changed = conn.execute("UPDATE pep_nodes SET access_model = ?, persist_items = ?, max_items = ?"
                           " WHERE username = ? AND node = ?",
                           (config.access_model, int(config.persist_items), config.max_items,
                            username, node)).rowcount > 0
    if changed:
        _trim(conn, username, node, config.kept)
    return changed


def publish(conn: sqlite3.Connection, username: str, node: str, item_id: str, payload: bytes,
            config: NodeConfig, create: bool) -> None:
    """Store an item (replacing one with the same id), creating the node first when `create`;
    the oldest items beyond what the node keeps are dropped."""
    if create:
        create_node(conn, username, node, config)
    conn.execute("DELETE FROM pep_items WHERE username = ? AND node = ? AND item_id = ?",
                 (username, node, item_id))
    conn.execute("INSERT INTO pep_items (username, node, item_id, stamp, payload) VALUES (?, ?, ?, ?, ?)",
                 (username, node, item_id, time.time(), payload))
    _trim(conn, username, node, config.kept)


def _trim(conn: sqlite3.Connection, username: str, node: str, keep: int) -> None:
    conn.execute("DELETE FROM pep_items WHERE username = ? AND node = ? AND seq NOT IN"
                 " (SELECT seq FROM pep_items WHERE username = ? AND node = ? ORDER BY seq DESC LIMIT ?)",
                 (username, node, username, node, keep))


def items(conn: sqlite3.Connection, username: str, node: str, limit: int | None = None) -> list[Item]:
    """The newest `limit` items (all when None), oldest first."""
    rows = conn.execute("SELECT item_id, payload, stamp FROM pep_items WHERE username = ? AND node = ?"
                        " ORDER BY seq DESC LIMIT ?", (username, node, -1 if limit is None else limit))
    return [Item(*row) for row in reversed(rows.fetchall())]


def items_by_id(conn: sqlite3.Connection, username: str, node: str, ids: list[str]) -> list[Item]:
    marks = ", ".join("?" * len(ids))
    rows = conn.execute(f"SELECT item_id, payload, stamp FROM pep_items WHERE username = ? AND node = ?"
                        f" AND item_id IN ({marks}) ORDER BY seq", (username, node, *ids))
    return [Item(*row) for row in rows]


def last_items(conn: sqlite3.Connection, username: str) -> dict[str, tuple[NodeConfig, Item]]:
    """Each node's newest item with the node's configuration, by node (nodes with no item left out)."""
    rows = conn.execute(
        "SELECT n.node, n.access_model, n.persist_items, n.max_items, i.item_id, i.payload, i.stamp"
        " FROM pep_nodes n JOIN pep_items i ON i.username = n.username AND i.node = n.node"
        " WHERE n.username = ? AND i.seq = (SELECT max(seq) FROM pep_items"
        " WHERE username = n.username AND node = n.node)", (username,))
    return {row[0]: (NodeConfig(row[1], bool(row[2]), row[3]), Item(*row[4:])) for row in rows}


def retract(conn: sqlite3.Connection, username: str, node: str, item_id: str) -> bool:
    return conn.execute("DELETE FROM pep_items WHERE username = ? AND node = ? AND item_id = ?",
                        (username, node, item_id)).rowcount > 0


def purge(conn: sqlite3.Connection, username: str, node: str) -> None:
    conn.execute("DELETE FROM pep_items WHERE username = ? AND node = ?", (username, node))


def delete_node(conn: sqlite3.Connection, username: str, node: str) -> bool:
    """Remove a node and (ON DELETE CASCADE) its items."""
    return conn.execute("DELETE FROM pep_nodes WHERE username = ? AND node = ?", (username, node)).rowcount > 0
