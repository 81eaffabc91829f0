"""store/pending.py with a real SQLite database: keys wait while their write is queued, and the
table forgets committed writes, so memory does not grow with every message ever confirmed (it did:
offline.py kept one entry per confirmed message for the life of the process)."""

from __future__ import annotations

from pathlib import Path

from appliance.store.db import Database
from appliance.store.pending import SWEEP_FLOOR, UntilCommitted


def _noop(conn: object) -> None:
    return None


async def test_a_key_waits_until_its_write_commits(tmp_path: Path) -> None:
    with Database.open(tmp_path / "x.sqlite3") as db:
        marks: UntilCommitted[int] = UntilCommitted()
        marks.add([1, 2], db.write_soon(_noop))
        assert marks.waiting(1) and marks.waiting(2) and not marks.waiting(3)
        await db.flush()
        assert not marks.waiting(1)
        assert len(marks) == 1  # 2 was not asked about yet


async def test_committed_writes_are_forgotten_without_being_asked_about(tmp_path: Path) -> None:
    with Database.open(tmp_path / "x.sqlite3") as db:
        marks: UntilCommitted[int] = UntilCommitted()
        for round_ in range(10):
            for key in range(round_ * SWEEP_FLOOR, (round_ + 1) * SWEEP_FLOOR):
                marks.add([key], db.write_soon(_noop))
            await db.flush()
        # Ten thousand confirmed, none asked about: what is left is bounded by the sweep floor.
        assert len(marks) <= SWEEP_FLOOR


async def test_take_hands_over_a_write_not_yet_committed_and_forgets_the_key(tmp_path: Path) -> None:
    with Database.open(tmp_path / "x.sqlite3") as db:
        marks: UntilCommitted[int] = UntilCommitted()
        queued = db.write_soon(_noop)
        marks.add([1, 2], queued)
        assert marks.take(1) is queued and not marks.waiting(1)
        await db.flush()
        assert marks.take(2) is None  # committed: nothing to take back
        assert len(marks) == 0
