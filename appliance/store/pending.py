"""Keys whose database write rides along with the next commit (`Database.write_soon`).

A client's ack of a stored message or a notification queues a write (delete the durable copy,
mark the delivery) without a transaction of its own. Until that write has committed, a reader of
the store still sees the row as undelivered, and must not send it again: `waiting(key)` says so.
Entries are dropped once committed: checked for a key when it is asked about, and for all of them
whenever the table has doubled since the last sweep, so memory follows the writes in flight, not
every message ever confirmed.
"""

from __future__ import annotations

from typing import Generic, Hashable, Iterable, TypeVar

from appliance.store.db import PendingWrite

K = TypeVar("K", bound=Hashable)
SWEEP_FLOOR = 1024  # no sweep below this many entries: a sweep walks them all


class UntilCommitted(Generic[K]):
    __slots__ = ("_jobs", "_sweep_at")

    def __init__(self) -> None:
        self._jobs: dict[K, PendingWrite] = {}
        self._sweep_at = SWEEP_FLOOR

    def add(self, keys: Iterable[K], job: PendingWrite) -> None:
        self._jobs.update(dict.fromkeys(keys, job))
        if len(self._jobs) >= self._sweep_at:
            for key in [key for key, pending in self._jobs.items() if pending.finished]:
                del self._jobs[key]
            self._sweep_at = max(SWEEP_FLOOR, 2 * len(self._jobs))

    def waiting(self, key: K) -> bool:
        """The write for `key` is queued and has not committed yet. After it has (or failed: the
        failure is logged, and the row simply goes out again), the key is forgotten."""
        job = self._jobs.get(key)
        if job is None:
            return False
        if job.finished:
            del self._jobs[key]
            return False
        return True

    def take(self, key: K) -> PendingWrite | None:
        """Forget `key`; its write if that has not committed yet."""
        job = self._jobs.pop(key, None)
        return job if job is not None and not job.finished else None

    def __len__(self) -> int:
        return len(self._jobs)
