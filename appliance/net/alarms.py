"""Readers' deadlines without a Trio cancel scope per read (net/transport.py, net/c2s.py).

A client's reader waits for bytes until a deadline: the earliest of its idle timeout, its next
ping, its next ack check and the release of its XML parser. A cancel scope around each wait did
that, but entering and leaving one (with its deadline registered and withdrawn) was about a fifth
of a wake-up's cost on the event loop (7 of 38 µs in a warm ping-pong; several times that with
the cold caches of a real load). Here the deadline is a number the reader keeps up to date, and
one task per Trio run keeps a heap of the times to look at: when one comes, the transport decides
(`Transport.alarm`) whether its reader has waited past its deadline and must be woken.

Deadlines mostly move later (every read pushes the idle timeout on), and that costs nothing: the
entry already in the heap is early, and when it comes the transport asks for one at its new
deadline. Only a deadline brought forward (a wait that starts with an earlier one, `wake_by`) adds
an entry.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import Protocol

import trio

log = logging.getLogger("appliance.net")


class Sleeper(Protocol):
    def alarm(self, when: float, now: float) -> None:
        """`when` has come (a time this sleeper asked for with `at`); `now` is the current time."""


class Alarms:
    """One per Trio run (`alarms()`): a heap of (time, order, sleeper) and the task that wakes them."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Sleeper]] = []
        self._order = itertools.count()  # ties go in the order asked; sleepers are never compared
        self._started = False
        self._sleep: trio.CancelScope | None = None  # the task's wait for the earliest entry

    def at(self, when: float, sleeper: Sleeper) -> None:
        """Call `sleeper.alarm(when, now)` at `when` (at once, from the task, if it has passed).
        A sleeper that closes simply ignores the call; its entry goes when its time comes."""
        heapq.heappush(self._heap, (when, next(self._order), sleeper))
        if not self._started:
            self._started = True
            trio.lowlevel.spawn_system_task(self._run, name="reader deadlines")
        elif self._sleep is not None and when < self._sleep.deadline:
            self._sleep.deadline = when

    def __len__(self) -> int:
        return len(self._heap)

    async def _run(self) -> None:
        while True:
            self._ring(trio.current_time())
            deadline = self._heap[0][0] if self._heap else math.inf
            with trio.CancelScope(deadline=deadline) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None

    def _ring(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, sleeper = heapq.heappop(heap)
            try:
                sleeper.alarm(when, now)  # may ask for a later time: pushed, and looked at next round
            except Exception:  # a bug in one sleeper must not end this task, and with it the process
                log.exception("an alarm for %r failed", sleeper)


_ALARMS: trio.lowlevel.RunVar[Alarms] = trio.lowlevel.RunVar("alarms")


def alarms() -> Alarms:
    """This Trio run's alarms (made at first use)."""
    try:
        return _ALARMS.get()
    except LookupError:
        made = Alarms()
        _ALARMS.set(made)
        return made
