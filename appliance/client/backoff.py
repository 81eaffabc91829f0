"""How long the client waits before its next connection attempt (sans-I/O: no clock, no sleeping;
the runner passes the time and a random.Random in).

Sized for GPRS and other mobile links (docs/client.md, "Staying connected"): the first attempt
after a lost link goes at once (most losses are a NAT entry or a cell hand-over, and the server
still holds the session for resumption); after that the waits double from `initial` up to `cap`,
each spread by ±`jitter` so that a whole ship's crew does not reconnect in step after the server
restarts. The count starts again only after a connection that lasted `stable_after` seconds: a
link that drops right after every login keeps backing off instead of hammering the server.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 1.0        # the first wait after the immediate retry
    factor: float = 2.0
    cap: float = 300.0          # the longest wait (before jitter)
    jitter: float = 0.2         # each wait is base * uniform(1 - jitter, 1 + jitter)
    stable_after: float = 60.0  # a connection this long resets the schedule
    failures: int = field(default=0, init=False)         # waits handed out since the last reset
    _connected_at: float | None = field(default=None, init=False)

    def base(self, n: int) -> float:
        """The n-th wait (0-based) before jitter: 0, then initial * factor**(n-1), capped."""
        if n == 0:
            return 0.0
        return min(self.cap, self.initial * self.factor ** min(n - 1, 64))

    def bounds(self, n: int) -> tuple[float, float]:
        """The smallest and largest n-th wait once jitter is applied."""
        b = self.base(n)
        return b * (1 - self.jitter), b * (1 + self.jitter)

    def next_delay(self, rng: random.Random) -> float:
        """The wait before the next attempt; each call moves one step along the schedule."""
        low, high = self.bounds(self.failures)
        self.failures += 1
        return rng.uniform(low, high)

    def connected(self, now: float) -> None:
        """A connection (login) succeeded at `now`."""
        self._connected_at = now

    def reset_if_stable(self, now: float) -> None:
        """The connection ended at `now`: start the schedule again if it lasted `stable_after`."""
        if self._connected_at is not None and now - self._connected_at >= self.stable_after:
            self.failures = 0
        self._connected_at = None
