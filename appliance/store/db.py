"""The database handle: one serialised writer connection, one reader connection, WAL.

Writes go through `write` (from trio) or `write_sync` (CLI, start-up), each a plain function
`fn(conn, *args)`. A caller that awaits `write` knows its change is durable when the await returns.

Group commit: on an SD card an fsync costs milliseconds, so `write` does not commit each call on
its own. Calls that arrive while a commit is running queue up, and the next commit takes all of
them: one `BEGIN IMMEDIATE ... COMMIT` with each call inside its own SAVEPOINT, so a call that
raises rolls back only its own changes and gets its exception, while the others commit. Every
caller still returns only after the COMMIT that holds its change. Under load this makes the commits
per message well below one; alone, a call commits at once, as before.

Commit delay: on a fast disk a commit is over before the next message arrives, so calls rarely
overlap and each pays a transaction of its own (its thread hop, its WAL pages, its fsync: SD-card
wear). While commits follow each other closely (the last one ended less than BUSY_SECONDS ago),
the call that leads the next commit first waits `commit_delay` for company, as PostgreSQL's
`commit_delay` does. It delays acknowledgements (and callers of `write`), never deliveries, and
only under load: a lone write after a quiet spell commits at once.

Reads are short indexed queries run directly on the event loop through a separate connection,
which WAL lets read while the writer writes.

Checkpoints: SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold, so
now and then one commit also copies the WAL into the database file and fsyncs it: with a large
archive (or an SD card) that commit takes hundreds of milliseconds, and every message waiting for
it waits too. Here the writer never checkpoints; every CHECKPOINT_COMMITS commits a PASSIVE
checkpoint runs on a connection of its own in a background thread, beside the commits.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import trio

from appliance.config import MAX_COMMIT_DELAY_MS
from appliance.store import schema

T = TypeVar("T")
log = logging.getLogger("appliance.store")

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
LAZY_SECONDS = 0.5   # a write_soon change waits at most this long for a commit to ride along with
BUSY_SECONDS = 0.05  # a commit that starts within this time of the last one's end waits commit_delay
MAX_COMMIT_DELAY = MAX_COMMIT_DELAY_MS / 1000  # seconds; the one bound, checked in config.load too
BUSY_TIMEOUT_MS = 5000  # another process (the CLI, the server) may hold the write lock briefly
CHECKPOINT_COMMITS = 100  # commits between two background checkpoints (SQLite's own: ~1000 pages)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # isolation_level=None: the sqlite3 module must not open transactions behind our back.
    # check_same_thread=False: writes run on trio's worker threads; self._lock serialises them.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")  # per connection, and needed for ON DELETE CASCADE
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints run beside the commits (Database)
    return conn


def _transaction(conn: sqlite3.Connection, begin: str, fn: Callable[..., T], args: tuple) -> T:
    conn.execute(begin)
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        # Also after a failed COMMIT (disk full): never leave the connection inside a transaction.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


@dataclass(eq=False)
class _Job:
    """One `write` call waiting for a commit."""
    fn: Callable[..., Any]
    args: tuple
    result: Any = None
    error: BaseException | None = None
    finished: bool = False
    waiting: bool = False   # a task waits for it (write, settle): it may be handed the next commit
    # Set when finished, or when its turn to lead a commit comes; made only for a job a task waits
    # for (most write_soon jobs are never waited for).
    wake: trio.Event | None = None
    number: int = 0         # its place in line: commits take jobs in this order (see withdraw)
    led: bool = False       # a task has taken the lead of the commit that holds it (see settle)
    then: list[Callable[[], None]] | None = None  # called once it is committed (see after)


PendingWrite = _Job


def _nothing(conn: sqlite3.Connection) -> None:
    """What a withdrawn write does."""


def _run_job(conn: sqlite3.Connection, job: _Job) -> None:
    if job.fn is _nothing:  # withdrawn: not even a savepoint (most durable copies of messages)
        return
    conn.execute("SAVEPOINT job")
    try:
        job.result = job.fn(conn, *job.args)
    except Exception as error:
        conn.execute("ROLLBACK TO job")
        job.error = error
    conn.execute("RELEASE job")


def _call_then(batch: list[_Job]) -> None:
    for job in batch:
        for then in job.then or ():
            try:
                then()
            except Exception:  # one caller's bug must not keep the others' answers
                log.exception("a callback after a database commit failed")


def _run_jobs(conn: sqlite3.Connection, batch: list[_Job]) -> None:
    for job in batch:
        _run_job(conn, job)


class Database:
    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection,
                 commit_delay: float = 0.0) -> None:
        self.path = path
        self.commit_delay = commit_delay   # seconds a commit under load waits for company
        self._last_commit_end = float("-inf")  # trio.current_time() when the last commit ended
        self.writes = 0   # write calls whose change committed
        self.commits = 0  # write transactions committed: below `writes` when group commit folds calls
        self._writer = writer
        self._reader = reader
        # The limiter keeps trio tasks queued in trio rather than in blocked worker threads; the
        # lock also covers write_sync, which may run beside trio (start-up, tests).
        self._limiter = trio.CapacityLimiter(1)
        self._lock = threading.Lock()
        self._queue: list[_Job] = []       # calls waiting for the next commit
        self._batch: list[_Job] = []       # the calls the running commit holds
        self._leading: _Job | None = None  # the call whose task runs the current commit
        self._numbered = 0                 # jobs queued so far (the last job's number)
        self._taken = 0                    # the number of the last job a commit has taken
        self._flush_scheduled = False      # a task will commit write_soon changes nobody waits for
        self._hurry_upto = 0               # the last job `after` wants committed soon
        self._hurrying = False             # a task is bringing those commits about
        self._closed = False
        self._synchronous = writer.execute("PRAGMA synchronous").fetchone()[0]
        self._checkpointer: sqlite3.Connection | None = None  # opened by the first checkpoint
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_running = False
        self._checkpointed_at = 0          # `commits` when the last checkpoint started

    @classmethod
    def open(cls, path: Path, synchronous: str = "FULL", commit_delay: float = 0.0) -> Database:
        """Open (creating if needed) and migrate. FULL: an acknowledged message survives power loss."""
        if not 0 <= commit_delay <= MAX_COMMIT_DELAY:
            raise ValueError(f"commit_delay must be between 0 and {MAX_COMMIT_DELAY:g} s")
        synchronous = synchronous.upper()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = _connect(path, synchronous)
        try:
            schema.migrate(writer, path)
            reader = _connect(path, synchronous)
        except BaseException:
            writer.close()
            raise
        return cls(path, writer, reader, commit_delay)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) on a worker thread inside a write transaction, possibly shared with
        other calls (group commit); returns fn's result, or raises its exception, after COMMIT."""
        return await self.settle(self._enqueue(fn, args))

    def write_soon(self, fn: Callable[..., Any], *args: Any) -> PendingWrite:
        """Queue fn for the next commit without waiting for it: it rides along with the next
        `write` (no transaction of its own), and is committed within LAZY_SECONDS if none comes.
        `settle` waits for it when durability matters; close() commits what is still queued."""
        job = self._enqueue(fn, args)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            trio.lowlevel.spawn_system_task(self._flush_later, name="database lazy commit")
        return job

    def _enqueue(self, fn: Callable[..., Any], args: tuple) -> _Job:
        self._numbered += 1
        job = _Job(fn, args, number=self._numbered)
        self._queue.append(job)
        return job

    def withdraw(self, job: PendingWrite) -> bool:
        """Turn a queued write into nothing if no commit has taken it yet: for a change that is
        moot before it reaches the disk (the durable copy of a message its recipient has already
        confirmed). The job keeps its place in line and still finishes with the commit that would
        have held it, after everything queued before it (a stanza's XEP-0198 count waits for it).
        False once a commit has taken it: the change will be written."""
        if job.number <= self._taken:
            return False
        job.fn, job.args = _nothing, ()
        return True

    def after(self, job: PendingWrite, then: Callable[[], None]) -> None:
        """Call `then()` once `job` is committed (or failed), from the task that finished the
        commit, at once if it is already; and see that the commit comes soon, as if a task waited
        for it (commit_delay under load), without any task waiting: for an answer that must not
        go out before the change is durable, while its asker goes on (an XEP-0198 <a/>)."""
        if job.finished:
            then()
            return
        job.then = [*(job.then or ()), then]
        self._hurry_upto = max(self._hurry_upto, job.number)
        if not self._hurrying:
            self._hurrying = True
            trio.lowlevel.spawn_system_task(self._hurry, name="database commit for answers")

    async def _hurry(self) -> None:
        try:
            while self._taken < self._hurry_upto:  # a job `after` waits for is still queued
                await self.flush()  # each round commits everything queued when it began
        finally:
            self._hurrying = False

    async def settle(self, job: PendingWrite) -> Any:
        """Wait until `job` is committed (leading the commit if nobody is); its result or error."""
        # Shielded: the caller must learn whether its change committed, and a waiting call may be
        # handed the lead of the next commit, which other callers depend on. A finished job needs
        # no scope (the second write of a message usually committed with the first).
        if not job.finished:
            with trio.CancelScope(shield=True):
                if self._leading is None:
                    self._leading = job
                else:
                    await self._wait_for(job)
                if not job.finished and not job.led:
                    job.led = True  # handed the lead, two tasks waiting for it wake: one leads
                    await self._commit_queued()
                while not job.finished:  # another task waiting for the same job leads its commit
                    await self._wait_for(job)
        if job.error is not None:
            raise job.error
        return job.result

    @staticmethod
    async def _wait_for(job: _Job) -> None:
        """Until the job is committed, or its turn to lead a commit comes."""
        job.waiting = True
        if job.wake is None or job.wake.is_set():  # (no `or`: a trio.Event has no truth value)
            job.wake = trio.Event()
        await job.wake.wait()

    async def flush(self) -> None:
        """Wait until every write queued so far is committed: for readers that must see them (an
        archive query after the live message it archived). Errors belong to the writes' owners."""
        pending = self._queue or self._batch
        if pending:
            try:
                await self.settle(pending[-1])  # commits are in order: the last one covers the rest
            except Exception:
                pass

    async def _commit_queued(self) -> None:
        """Commit every queued call in one transaction, then hand the lead to the next waiter."""
        if self.commit_delay and trio.current_time() - self._last_commit_end < BUSY_SECONDS:
            await trio.sleep(self.commit_delay)  # under load: let the next calls join this commit
        batch, self._queue = self._queue, []
        self._batch = batch
        self._taken = self._numbered
        try:
            await trio.to_thread.run_sync(self._commit_batch, batch, limiter=self._limiter)
        finally:
            self._batch = []
            self._last_commit_end = trio.current_time()
            for job in batch:
                job.finished = True
                if job.wake is not None:
                    job.wake.set()
            _call_then(batch)
            self._leading = next((job for job in self._queue if job.waiting), None)
            if self._leading is not None and self._leading.wake is not None:
                self._leading.wake.set()
            if self.commits - self._checkpointed_at >= CHECKPOINT_COMMITS and not self._checkpoint_running:
                self._checkpoint_running, self._checkpointed_at = True, self.commits
                trio.lowlevel.spawn_system_task(self._checkpoint, name="database checkpoint")

    async def _checkpoint(self) -> None:
        try:
            await trio.to_thread.run_sync(self._checkpoint_sync)
        except Exception:  # the next one tries again; close() checkpoints anyway
            log.exception("a background WAL checkpoint failed")
        finally:
            self._checkpoint_running = False

    def _checkpoint_sync(self) -> None:
        with self._checkpoint_lock:
            if self._closed:
                return
            if self._checkpointer is None:
                self._checkpointer = _connect(self.path, self._synchronous)
            # PASSIVE: copies what no reader still needs, waits for nobody, blocks no writer.
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def _flush_later(self) -> None:
        try:
            await trio.sleep(LAZY_SECONDS)
        finally:
            # Writes queued from now on schedule the next flush. (Reset only here: resetting after
            # the commit too would let a second flush be scheduled while one is already waiting,
            # and so on, each committing on its own.)
            self._flush_scheduled = False
        try:
            if self._queue:
                await self.settle(self._queue[-1])  # the last one: the commit takes all before it
        except Exception:  # the caller of write_soon chose not to hear about errors; log them
            log.exception("a deferred database write failed")

    def _commit_batch(self, batch: list[_Job]) -> None:
        with self._lock:
            try:
                self._check_open()
                _transaction(self._writer, "BEGIN IMMEDIATE", _run_jobs, (batch,))
            except BaseException as error:  # nothing of the batch committed: every call learns why
                for job in batch:
                    job.error = error
                if not isinstance(error, Exception):
                    raise
                return
            self.commits += 1
            self.writes += sum(job.error is None and job.fn is not _nothing for job in batch)

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """One call in its own transaction, blocking; for the CLI and start-up, where no trio loop runs."""
        with self._lock:
            self._check_open()
            result = _transaction(self._writer, "BEGIN IMMEDIATE", fn, args)
            self.writes += 1
            self.commits += 1
            return result

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) on the reader connection, in one read transaction.

        The transaction gives fn one consistent snapshot across several SELECTs. It blocks the
        caller, so keep fn to short indexed queries when calling it on the event loop.
        """
        self._check_open()
        return _transaction(self._reader, "BEGIN DEFERRED", fn, args)

    async def aclose(self) -> None:
        """close(), once the commit in flight (if any) has finished: a commit whose batch a task
        has taken but whose worker thread has not yet begun is invisible to close(), which would
        shut the connection under it and fail every write in it (a stop in the middle of one)."""
        with trio.CancelScope(shield=True):  # a stop is often a cancellation: the writes still land
            while self._batch and not self._closed:
                await self.flush()
        self.close()

    def close(self) -> None:
        """Commit what write_soon left queued, checkpoint the WAL into the main file and close both
        connections. Idempotent."""
        leftover, self._queue = self._queue, []
        self._taken = self._numbered
        if leftover and not self._closed:
            self._commit_batch(leftover)
            for job in leftover:
                job.finished = True
                if job.error is not None:
                    log.error("a deferred database write failed at close: %r", job.error)
            _call_then(leftover)
        with self._lock, self._checkpoint_lock:
            if self._closed:
                return
            self._closed = True
            self._reader.close()
            if self._checkpointer is not None:
                self._checkpointer.close()
            try:
                # PASSIVE never waits for another process's readers; the last connection to close
                # (ours, unless the server is still running) checkpoints fully and removes the WAL.
                self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                self._writer.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"database {self.path} is closed")

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
