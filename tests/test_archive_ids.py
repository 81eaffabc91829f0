"""Archive ids (store/archive.py, schema 8): new rows are named by their seq in hexadecimal and need
no index of their own; rows archived before keep their random ids, still found through a partial
index. Real SQLite files, migrated from schema 7 as a server upgraded in the field would be."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest

from appliance.store import archive, schema, users
from appliance.store.db import Database

ITERATIONS = 4096


def _database_at_schema_7(path: Path, old_id: str) -> None:
    """A database as schema 7 left it: alice, bob and one message archived under a random id."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for script in schema.MIGRATIONS[:7]:
        for statement in schema._statements(script):
            conn.execute(statement)
    for name in ("alice", "bob"):
        users.create_user(conn, name, "pw", ITERATIONS)
    conn.execute("INSERT INTO archive (seq, username, id, with_jid, with_resource, outgoing, stanza)"
                 " VALUES (1000, 'alice', ?, 'bob@example.test', '', 0, x'3c6d2f3e')", (old_id,))
    conn.execute("PRAGMA user_version = 7")
    conn.execute("COMMIT")
    conn.close()


@pytest.fixture
def upgraded(tmp_path: Path) -> tuple[Database, str]:
    old_id = secrets.token_urlsafe(12)
    path = tmp_path / "appliance.sqlite3"
    _database_at_schema_7(path, old_id)
    db = Database.open(path)
    yield db, old_id
    db.close()


def _entry(user: str, seq: int) -> archive.Entry:
    return archive.Entry(user, seq, "bob@example.test", "", False, b"<message/>")


def test_new_rows_are_named_by_their_seq_and_old_ids_still_resolve(upgraded: tuple[Database, str]) -> None:
    db, old_id = upgraded
    assert len(old_id) == archive.RANDOM_ID_LENGTH
    seq = db.read(archive.last_seq) + 1_000_000
    db.write_sync(archive.add_messages, [_entry("alice", seq), _entry("bob", seq + 1)])
    ids = db.read(lambda conn: dict(conn.execute("SELECT seq, id FROM archive").fetchall()))
    assert ids == {1000: old_id, seq: format(seq, "x"), seq + 1: format(seq + 1, "x")}
    assert db.read(archive.seq_of, "alice", old_id) == 1000
    assert db.read(archive.seq_of, "alice", archive.id_for(seq)) == seq
    assert db.read(archive.seq_of, "bob", archive.id_for(seq + 1)) == seq + 1
    # An id names a row of its own archive only, and only in its one spelling.
    assert db.read(archive.seq_of, "bob", archive.id_for(seq)) is None
    assert db.read(archive.seq_of, "bob", old_id) is None
    for spelling in (archive.id_for(seq).upper(), "0" + archive.id_for(seq), "0x" + archive.id_for(seq),
                     "-" + archive.id_for(seq), "not an id", "", archive.id_for(seq + 99)):
        assert db.read(archive.seq_of, "alice", spelling) is None, spelling


def test_only_old_ids_are_indexed_and_lookups_use_a_key(upgraded: tuple[Database, str]) -> None:
    db, old_id = upgraded
    seq = db.read(archive.last_seq) + 1
    db.write_sync(archive.add_messages, [_entry("alice", seq)])
    indexed = db.read(lambda conn: conn.execute(
        "SELECT count(*) FROM archive INDEXED BY archive_by_id WHERE length(id) = 16").fetchone()[0])
    assert indexed == 1  # the old row; the new one is not in the index
    sql = db.read(lambda conn: conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'archive_by_id'").fetchone()[0])
    assert "WHERE length(id) = 16" in sql

    def plan(conn: sqlite3.Connection, query: str, args: tuple) -> str:
        return " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + query, args))

    by_old = db.read(plan, "SELECT seq FROM archive WHERE username = ? AND id = ? AND length(id) = 16",
                     ("alice", old_id))
    by_new = db.read(plan, "SELECT seq FROM archive WHERE seq = ? AND username = ?", (seq, "alice"))
    assert "archive_by_id" in by_old, by_old
    assert "INTEGER PRIMARY KEY" in by_new, by_new
