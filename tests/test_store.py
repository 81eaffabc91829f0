"""The SQLite store on real database files: schema, users, roster, offline, the writer."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import scramp
import trio
import trio.testing

from appliance.store import offline, roster, schema, users
from appliance.store import db as db_module
from appliance.store.db import Database
from appliance.store.roster import RosterItem

ITERATIONS = 4096  # the RFC 7677 minimum; the default config uses more


@pytest.fixture
def db(tmp_path):
    database = Database.open(tmp_path / "data" / "appliance.sqlite3")
    yield database
    database.close()


@pytest.fixture
def alice(db):
    db.write_sync(users.create_user, "alice", "alice-secret", ITERATIONS)
    return "alice"


# --- schema and connection ---------------------------------------------------------------------

def test_open_creates_directory_and_sets_pragmas(tmp_path):
    path = tmp_path / "new" / "dir" / "db.sqlite3"
    with Database.open(path) as db:
        pragmas = db.read(lambda c: [c.execute(f"PRAGMA {p}").fetchone()[0]
                                     for p in ("journal_mode", "foreign_keys", "busy_timeout",
                                               "synchronous", "user_version")])
    assert pragmas == ["wal", 1, 5000, 2, schema.SCHEMA_VERSION]  # synchronous 2 = FULL


def test_synchronous_is_configurable_and_checked(tmp_path):
    with Database.open(tmp_path / "a.sqlite3", synchronous="normal") as db:
        assert db.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1
    with pytest.raises(ValueError):
        Database.open(tmp_path / "b.sqlite3", synchronous="FULL; DROP TABLE users")


def _schema_sql(db):
    return db.read(lambda c: c.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall())


def test_migrations_are_idempotent(tmp_path):
    path = tmp_path / "db.sqlite3"
    with Database.open(path) as db:
        first = _schema_sql(db)
        db.write_sync(users.create_user, "alice", "pw", ITERATIONS)
    with Database.open(path) as db:
        assert _schema_sql(db) == first
        assert db.read(users.list_users) == ["alice"]
    conn = sqlite3.connect(path, isolation_level=None)
    assert schema.migrate(conn) == schema.migrate(conn) == schema.SCHEMA_VERSION
    conn.close()


def test_newer_database_is_refused(tmp_path):
    path = tmp_path / "db.sqlite3"
    Database.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(schema.SchemaTooNew, match="newer appliance"):
        Database.open(path)


def test_failed_migration_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "db.sqlite3"
    Database.open(path).close()
    broken = "CREATE TABLE half_done (x); SELECT no_such_function();"
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [broken])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    with pytest.raises(sqlite3.OperationalError):
        Database.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION - 1
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchall()
    conn.close()


def test_statement_split_respects_strings():
    script = "CREATE TABLE t (x TEXT DEFAULT 'a;b'); -- note; here\nINSERT INTO t VALUES ('c;d');"
    assert len(schema._statements(script)) == 2


def test_write_rolls_back_on_error(db):
    def create_then_fail(conn):
        users.create_user(conn, "ghost", "pw", ITERATIONS)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        db.write_sync(create_then_fail)
    assert not db.read(users.user_exists, "ghost")
    assert db.writes == 0
    db.write_sync(users.create_user, "ghost", "pw", ITERATIONS)  # the connection is usable again
    assert db.writes == 1


def test_close_is_idempotent_and_final(tmp_path):
    db = Database.open(tmp_path / "db.sqlite3")
    db.close()
    db.close()
    with pytest.raises(RuntimeError, match="closed"):
        db.write_sync(users.list_users)
    assert not (tmp_path / "db.sqlite3-wal").exists()  # the last close checkpoints the WAL away


# --- users -------------------------------------------------------------------------------------

def test_user_crud(db, alice):
    assert db.read(users.user_exists, "alice")
    assert not db.read(users.user_exists, "bob")
    with pytest.raises(users.UserExists):
        db.write_sync(users.create_user, "alice", "other", ITERATIONS)
    db.write_sync(users.create_user, "bob", "bob-secret", ITERATIONS)
    assert db.read(users.list_users) == ["alice", "bob"]
    assert db.write_sync(users.set_password, "bob", "new", ITERATIONS) is True
    assert db.write_sync(users.set_password, "carol", "new", ITERATIONS) is False
    assert db.write_sync(users.delete_user, "bob") is True
    assert db.write_sync(users.delete_user, "bob") is False
    assert db.read(users.list_users) == ["alice"]


def _matches(creds: users.ScramCredentials, mechanism: str, password: str) -> bool:
    _salt, stored_key, server_key, _ = scramp.ScramMechanism(mechanism).make_auth_info(
        password, iteration_count=creds.iterations, salt=creds.salt)
    return (stored_key, server_key) == (creds.stored_key, creds.server_key)


@pytest.mark.parametrize("mechanism", users.MECHANISMS)
def test_credentials_verify(db, alice, mechanism):
    creds = db.read(users.scram_credentials, "alice", mechanism)
    assert creds.iterations == ITERATIONS and len(creds.salt) >= 16
    assert _matches(creds, mechanism, "alice-secret")
    assert not _matches(creds, mechanism, "wrong")
    db.write_sync(users.set_password, "alice", "changed", ITERATIONS)
    creds = db.read(users.scram_credentials, "alice", mechanism)
    assert _matches(creds, mechanism, "changed") and not _matches(creds, mechanism, "alice-secret")


@pytest.mark.parametrize("mechanism", users.MECHANISMS)
def test_full_scram_exchange_against_stored_keys(db, alice, mechanism):
    def auth_fn(username):
        c = db.read(users.scram_credentials, username, mechanism)
        return c.salt, c.stored_key, c.server_key, c.iterations

    server = scramp.ScramMechanism(mechanism).make_server(auth_fn)
    client = scramp.ScramClient([mechanism], "alice", "alice-secret")
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    server.set_client_final(client.get_client_final())
    client.set_server_final(server.get_server_final())  # raises if the server's proof is wrong


def test_unknown_mechanism_or_user(db, alice):
    assert db.read(users.scram_credentials, "alice", "SCRAM-SHA-512") is None
    assert db.read(users.scram_credentials, "bob", "SCRAM-SHA-256") is None


def test_no_plaintext_password_in_database_files(tmp_path):
    path = tmp_path / "db.sqlite3"
    secrets = ["first-PLAINTEXT-secret-42", "second-PLAINTEXT-secret-43"]
    with Database.open(path) as db:
        db.write_sync(users.create_user, "alice", secrets[0], ITERATIONS)
        db.write_sync(users.set_password, "alice", secrets[1], ITERATIONS)
        files = [p for p in tmp_path.iterdir() if p.name.startswith("db.sqlite3")]
        contents = b"".join(p.read_bytes() for p in files)  # main file and WAL, while open
    contents += path.read_bytes()
    for secret in secrets:
        assert secret.encode() not in contents
        assert secret.encode("utf-16-le") not in contents
    assert b"alice" in contents  # the search itself does see the data


def test_make_credentials_is_pure_and_salted():
    a = users.make_credentials("pw", ITERATIONS)
    b = users.make_credentials("pw", ITERATIONS)
    assert set(a) == set(users.MECHANISMS)
    assert a["SCRAM-SHA-256"].salt != b["SCRAM-SHA-256"].salt
    assert a["SCRAM-SHA-1"].stored_key != a["SCRAM-SHA-256"].stored_key


# --- roster ------------------------------------------------------------------------------------

def test_roster_versioning(db, alice):
    assert db.read(roster.get_roster, "alice") == (0, [])
    bob = RosterItem("bob@example.local", name="Bob", groups=["Friends", "Work", "Friends"])
    assert db.write_sync(roster.set_item, "alice", bob) == 1
    assert db.write_sync(roster.set_item, "alice", bob) == 1  # no change, no new version
    carol = RosterItem("carol@example.org", subscription="both", ask=True, approved=True)
    assert db.write_sync(roster.set_item, "alice", carol) == 2
    bob.subscription = "to"
    assert db.write_sync(roster.set_item, "alice", bob) == 3
    version, items = db.read(roster.get_roster, "alice")
    assert version == 3 == db.read(roster.roster_version, "alice")
    assert [i.contact for i in items] == ["bob@example.local", "carol@example.org"]
    assert items[0] == RosterItem("bob@example.local", "Bob", "to", False, False, ["Friends", "Work"])
    assert items[1] == carol
    assert db.read(roster.count_items, "alice") == 2
    assert db.write_sync(roster.remove_item, "alice", "carol@example.org") == 4
    assert db.write_sync(roster.remove_item, "alice", "carol@example.org") is None
    assert db.read(roster.get_item, "alice", "carol@example.org") is None
    assert db.read(roster.roster_version, "alice") == 4


def test_roster_rejects_bad_input(db, alice):
    with pytest.raises(ValueError):
        db.write_sync(roster.set_item, "alice", RosterItem("bob@x", subscription="maybe"))
    with pytest.raises(users.NoSuchUser):
        db.write_sync(roster.set_item, "nobody", RosterItem("bob@x"))
    assert db.read(roster.roster_version, "alice") == 0


def test_pending_inbound_subscriptions(db, alice):
    db.write_sync(roster.store_pending_in, "alice", "bob@x", b"<presence type='subscribe'>1</presence>")
    db.write_sync(roster.store_pending_in, "alice", "carol@y", b"<presence type='subscribe'/>")
    db.write_sync(roster.store_pending_in, "alice", "bob@x", b"<presence type='subscribe'>2</presence>")
    assert db.read(roster.pending_in, "alice") == [
        ("bob@x", b"<presence type='subscribe'>2</presence>"),
        ("carol@y", b"<presence type='subscribe'/>"),
    ]
    assert db.write_sync(roster.clear_pending_in, "alice", "bob@x") is True
    assert db.write_sync(roster.clear_pending_in, "alice", "bob@x") is False
    assert [c for c, _ in db.read(roster.pending_in, "alice")] == ["carol@y"]
    with pytest.raises(users.NoSuchUser):
        db.write_sync(roster.store_pending_in, "nobody", "bob@x", b"<presence/>")


# --- offline -----------------------------------------------------------------------------------

def test_offline_store_fetch_delete(db, alice):
    ids = [db.write_sync(offline.store_message, "alice", f"<message>{n}</message>".encode(), 100.0 + n, 3)
           for n in range(3)]
    with pytest.raises(offline.OfflineFull):
        db.write_sync(offline.store_message, "alice", b"<message>overflow</message>", 200.0, 3)
    stored = db.read(offline.fetch_messages, "alice")
    assert stored == [(ids[n], f"<message>{n}</message>".encode(), 100.0 + n) for n in range(3)]
    db.write_sync(offline.delete_messages, "alice", ids[:2])
    assert db.read(offline.count_messages, "alice") == 1
    new_id = db.write_sync(offline.store_message, "alice", b"<message>3</message>", 300.0, 3)
    assert new_id > max(ids)  # ids are never reused
    db.write_sync(offline.delete_messages, "bob", [new_id])  # another user's ids are not touched
    assert db.read(offline.count_messages, "alice") == 2
    with pytest.raises(users.NoSuchUser):
        db.write_sync(offline.store_message, "nobody", b"<message/>", 1.0, 10)


def test_delete_user_cascades(db, alice):
    db.write_sync(users.create_user, "bob", "pw", ITERATIONS)
    for user in ("alice", "bob"):
        db.write_sync(roster.set_item, user, RosterItem("carol@x"))
        db.write_sync(roster.store_pending_in, user, "dave@x", b"<presence/>")
        db.write_sync(offline.store_message, user, b"<message/>", 1.0, 10)
    assert db.write_sync(users.delete_user, "alice")
    assert db.read(roster.get_roster, "alice") == (0, [])
    assert db.read(roster.pending_in, "alice") == []
    assert db.read(offline.count_messages, "alice") == 0
    assert all(db.read(users.scram_credentials, "alice", m) is None for m in users.MECHANISMS)
    assert db.read(roster.count_items, "bob") == 1
    assert len(db.read(roster.pending_in, "bob")) == 1
    assert db.read(offline.count_messages, "bob") == 1
    # A new account under the old name starts empty.
    db.write_sync(users.create_user, "alice", "pw", ITERATIONS)
    assert db.read(roster.get_roster, "alice") == (0, [])


# --- the writer from trio ----------------------------------------------------------------------

async def test_async_write_and_read(db):
    creds = await trio.to_thread.run_sync(users.make_credentials, "pw", ITERATIONS)
    await db.write(users.insert_user, "alice", creds)
    assert db.read(users.user_exists, "alice")
    assert await db.write(roster.set_item, "alice", RosterItem("bob@x")) == 1
    assert db.writes == 2


async def test_concurrent_writes_are_serialised(db, alice):
    inside = 0
    most_inside = 0

    def slow_increment(conn):
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        version = roster.roster_version(conn, "alice")
        time.sleep(0.002)  # widen the window for a lost update
        conn.execute("UPDATE users SET roster_version = ? WHERE username = 'alice'", (version + 1,))
        inside -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(25):
            nursery.start_soon(db.write, slow_increment)
    assert most_inside == 1
    assert db.read(roster.roster_version, "alice") == 25
    assert db.writes == 26  # alice's creation too


async def test_reads_do_not_wait_for_a_running_write(db, alice):
    started, release = threading.Event(), threading.Event()

    def long_write(conn):
        users.delete_user(conn, "alice")
        started.set()
        release.wait(5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.write, long_write)
        await trio.to_thread.run_sync(started.wait, 5)
        t0 = time.monotonic()
        assert db.read(users.list_users) == ["alice"]  # the last committed snapshot
        assert time.monotonic() - t0 < 0.5
        release.set()
    assert db.read(users.list_users) == []


async def test_cancelled_write_still_completes(db):
    with trio.move_on_after(0.001):
        await db.write(lambda conn: (time.sleep(0.05), users.create_user(conn, "bob", "pw", ITERATIONS)))
    assert db.read(users.user_exists, "bob")  # the caller waited; the outcome is known


# --- group commit ---------------------------------------------------------------------------------

def _add_item(conn, user, contact):
    return roster.set_item(conn, user, RosterItem(contact))


async def test_writes_queued_during_a_commit_share_the_next_one(db, alice):
    commits = db.commits
    results = {}

    async def add(n):
        results[n] = await db.write(_add_item, "alice", f"c{n}@x")

    async with trio.open_nursery() as nursery:
        for n in range(40):
            nursery.start_soon(add, n)
    assert db.read(roster.count_items, "alice") == 40
    assert sorted(results.values()) == list(range(1, 41))  # each caller got its own result
    assert db.commits - commits < 40 // 2  # the first commits alone, the rest queue behind it


async def test_a_failing_write_in_a_shared_commit_fails_alone(db, alice):
    def add_then_fail(conn):
        _add_item(conn, "alice", "ghost@x")
        raise RuntimeError("boom")

    outcomes = {}
    commits = db.commits

    async def run(name, fn, *args):
        try:
            outcomes[name] = await db.write(fn, *args)
        except RuntimeError as error:
            outcomes[name] = error

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "first", _add_item, "alice", "a@x")   # leads; the others queue
        await trio.sleep(0)
        nursery.start_soon(run, "bad", add_then_fail)
        nursery.start_soon(run, "good", _add_item, "alice", "b@x")
    assert isinstance(outcomes["bad"], RuntimeError)
    assert db.commits == commits + 2  # "bad" and "good" shared the second commit
    names = {item.contact for item in db.read(roster.get_roster, "alice")[1]}
    assert names == {"a@x", "b@x"}  # ghost@x was rolled back to its savepoint, b@x committed


async def test_under_load_a_commit_waits_for_company(tmp_path):
    """Commit delay: writes a few ms apart share one commit once commits follow each other closely;
    a write after a quiet spell commits at once."""
    with Database.open(tmp_path / "db.sqlite3", commit_delay=0.05) as db:
        await db.write(users.create_user, "alice", "pw", ITERATIONS)  # quiet before: at once
        commits, t0 = db.commits, trio.current_time()

        async def add(n):
            await trio.sleep(n * 0.01)  # 10 ms apart: without the delay each commits alone
            await db.write(_add_item, "alice", f"c{n}@x")

        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(add, n)
        assert db.commits - commits == 1  # busy (the user's commit just ended): all four shared it
        assert trio.current_time() - t0 >= 0.05
        await trio.sleep(0.2)  # quiet again
        t1 = trio.current_time()
        await db.write(_add_item, "alice", "lone@x")
        assert trio.current_time() - t1 < 0.05 and db.commits - commits == 2


def test_commit_delay_is_bounded(tmp_path):
    with pytest.raises(ValueError, match="commit_delay"):
        Database.open(tmp_path / "db.sqlite3", commit_delay=5)


async def test_checkpoints_run_beside_the_commits(tmp_path, monkeypatch):
    """The writer never checkpoints inside a COMMIT (a slow one would hold up every message
    waiting for it); every CHECKPOINT_COMMITS commits a background thread copies the WAL into
    the database file."""
    monkeypatch.setattr(db_module, "CHECKPOINT_COMMITS", 5)
    path = tmp_path / "db.sqlite3"
    with Database.open(path) as db:
        assert db._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        await db.write(users.create_user, "alice", "pw", ITERATIONS)
        size_before = path.stat().st_size  # the migrations and alice are still in the WAL only
        for n in range(5):
            await db.write(_add_item, "alice", f"c{n}@x")
        with trio.fail_after(5):
            while db._checkpoint_running or db.commits - db._checkpointed_at >= 5:
                await trio.sleep(0.01)
        assert path.stat().st_size > size_before  # copied into the database file, before close
        assert db.read(roster.count_items, "alice") == 5


async def test_write_soon_rides_along_with_the_next_write(db, alice):
    commits = db.commits
    pending = db.write_soon(_add_item, "alice", "later@x")
    assert not pending.finished and db.read(roster.count_items, "alice") == 0
    await db.write(_add_item, "alice", "now@x")
    assert pending.finished and db.commits == commits + 1  # both in one transaction
    assert db.read(roster.count_items, "alice") == 2
    assert await db.settle(pending) == 1


async def test_write_soon_commits_on_its_own_when_nothing_follows(db, alice):
    pending = db.write_soon(_add_item, "alice", "later@x")
    with trio.fail_after(5):
        while not pending.finished:
            await trio.sleep(0.05)
    assert db.read(roster.count_items, "alice") == 1


async def test_a_steady_trickle_of_write_soon_commits_once_per_lazy_period(db, alice, monkeypatch):
    """Nobody waits for these writes (a reader no longer waits for the commit of each stanza):
    they commit once per LAZY_SECONDS, not once each, and no second flush piles up on the first."""
    monkeypatch.setattr(db_module, "LAZY_SECONDS", 0.1)
    commits, started = db.commits, trio.current_time()
    last = None
    for n in range(300):  # 1.5 s, one every 5 ms
        last = db.write_soon(_add_item, "alice", f"trickle{n}@x")
        await trio.sleep(0.005)
    with trio.fail_after(5):
        while not last.finished:
            await trio.sleep(0.01)
    periods = (trio.current_time() - started) / 0.1
    assert db.read(roster.count_items, "alice") == 300
    assert db.commits - commits <= periods + 2, (db.commits - commits, periods)


async def test_a_withdrawn_write_is_not_run_but_finishes_in_its_place(db, alice):
    """Withdrawing a queued write (the durable copy of a message confirmed before its commit)
    skips its SQL, and the job still finishes with the commit of what was queued before it: an
    XEP-0198 count waiting for it must not run ahead of those writes."""
    writes = db.writes
    before = db.write_soon(_add_item, "alice", "before@x")
    moot = db.write_soon(_add_item, "alice", "moot@x")
    assert db.withdraw(moot)
    await db.settle(moot)
    assert moot.finished and before.finished  # one commit: the earlier write is durable too
    assert db.writes == writes + 1  # the withdrawn one changed nothing
    assert [item.contact for item in db.read(roster.get_roster, "alice")[1]] == ["before@x"]


async def test_a_write_a_commit_has_taken_cannot_be_withdrawn(db, alice):
    taken = db.write_soon(_add_item, "alice", "taken@x")
    started, release = threading.Event(), threading.Event()

    def slow(conn):
        started.set()
        release.wait(5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.write, slow)  # takes `taken` into its commit
        await trio.to_thread.run_sync(started.wait, 5)
        assert not taken.finished
        assert not db.withdraw(taken)  # in the running commit: it will be written
        later = db.write_soon(_add_item, "alice", "later@x")
        assert db.withdraw(later)     # queued behind the running commit: not yet
        release.set()
    await db.flush()
    assert [item.contact for item in db.read(roster.get_roster, "alice")[1]] == ["taken@x"]


async def test_close_commits_what_write_soon_left(tmp_path):
    path = tmp_path / "db.sqlite3"
    db = Database.open(path)
    db.write_sync(users.create_user, "alice", "pw", ITERATIONS)
    db.write_soon(_add_item, "alice", "later@x")
    db.close()
    with Database.open(path) as again:
        assert again.read(roster.count_items, "alice") == 1


async def test_aclose_waits_for_a_commit_whose_thread_has_not_begun(tmp_path):
    """A stop while a commit's batch is taken but its worker thread has not begun (here: held at
    the writer's thread limiter): close() alone could not see it and would shut the connection
    under it, failing the write; aclose() lets it commit first (the CI failure of a SIGTERM
    during the first-start invite's write)."""
    path = tmp_path / "db.sqlite3"
    db = Database.open(path)
    db.write_sync(users.create_user, "alice", "pw", ITERATIONS)
    outcomes = []

    async def write() -> None:
        outcomes.append(await db.write(_add_item, "alice", "in-flight@x"))

    async with trio.open_nursery() as nursery:
        await db._limiter.acquire()
        try:
            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()
            assert db._batch, "the commit has taken its batch"
            nursery.start_soon(db.aclose)
            await trio.testing.wait_all_tasks_blocked()
            assert not db._closed
        finally:  # (else a failure here would leave the write's thread waiting forever)
            db._limiter.release()
    assert len(outcomes) == 1 and db._closed  # the write returned (it raised nothing)
    with Database.open(path) as again:
        assert again.read(roster.count_items, "alice") == 1


async def test_after_calls_back_once_committed_and_soon_without_a_waiting_task(db, alice):
    """`after` (an XEP-0198 <a/> for a phone's <r/>): nobody waits, yet the commit comes well
    before the lazy one (LAZY_SECONDS), and the callbacks run in the order of the writes, after
    their changes are on disk."""
    seen = []
    first = db.write_soon(_add_item, "alice", "first@x")
    second = db.write_soon(_add_item, "alice", "second@x")

    def note(name):
        seen.append((name, [i.contact for i in db.read(roster.get_roster, "alice")[1]]))

    started = trio.current_time()
    db.after(second, lambda: note("second"))
    db.after(first, lambda: note("first"))
    with trio.fail_after(5):
        while len(seen) < 2:
            await trio.sleep(0.005)
    assert trio.current_time() - started < db_module.LAZY_SECONDS / 2
    assert seen == [("first", ["first@x", "second@x"]), ("second", ["first@x", "second@x"])]
    db.after(first, lambda: note("again"))  # already committed: at once
    assert seen[-1][0] == "again"


async def test_after_waits_for_a_running_commit_and_then_for_the_next(db, alice):
    """A write queued behind a running commit gets a commit of its own soon after, and a failing
    callback does not keep the others."""
    started, release = threading.Event(), threading.Event()
    seen = []

    def slow(conn):
        started.set()
        release.wait(5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.write, slow)
        await trio.to_thread.run_sync(started.wait, 5)
        behind = db.write_soon(_add_item, "alice", "behind@x")
        db.after(behind, lambda: 1 / 0)
        db.after(behind, lambda: seen.append(behind.finished))
        release.set()
    with trio.fail_after(db_module.LAZY_SECONDS / 2):
        while not seen:
            await trio.sleep(0.005)
    assert seen == [True]


async def test_two_tasks_settling_one_queued_write_both_wait_for_its_commit(db, alice):
    """A MAM query's flush and the lazy commit (or an <r/>'s answer) may wait for the same write
    while another commit leads: both wait, and both return once it is committed. (The second
    waiter used to get a NotImplementedError from `job.wake or ...`: a trio.Event has no truth
    value; flush() swallowed it and returned before the commit.) Only one of them leads the
    write's commit: the other waits for it instead of starting a commit of its own."""
    started, release = threading.Event(), threading.Event()
    returned = []
    commits = db.commits

    def slow(conn):
        started.set()
        release.wait(5)

    async def waiter(job):
        await db.settle(job)
        returned.append(job.finished)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.write, slow)  # leads a commit
        await trio.to_thread.run_sync(started.wait, 5)
        queued = db.write_soon(_add_item, "alice", "queued@x")
        nursery.start_soon(waiter, queued)
        nursery.start_soon(waiter, queued)
        await trio.testing.wait_all_tasks_blocked()
        assert returned == []
        release.set()
    assert returned == [True, True]
    assert db.commits == commits + 2  # the slow write's, then one for the queued write
