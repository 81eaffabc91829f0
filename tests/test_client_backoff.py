"""The client's back-off schedule (appliance/client/backoff.py) against the table documented in
docs/client.md ("The back-off schedule"), with seeded randomness."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from appliance.client.backoff import Backoff

DOCS = Path(__file__).resolve().parent.parent / "docs" / "client.md"
_ROW = re.compile(r"^\| (\d+)( and later)? \| ([\d.]+) s \| ([\d.]+)(?:–([\d.]+))? s \|$")


def documented_schedule() -> list[tuple[float, float, float]]:
    """(base, low, high) per attempt from the docs' table; the last row repeated for 'and later'."""
    section = DOCS.read_text().split("### The back-off schedule", 1)[1]
    rows = [m for line in section.splitlines() if (m := _ROW.match(line))]
    assert rows, "no schedule table in docs/client.md"
    assert [int(m.group(1)) for m in rows] == list(range(1, len(rows) + 1))
    assert rows[-1].group(2), "the last row should say 'and later'"
    table = [(float(m.group(3)), float(m.group(4)), float(m.group(5) or m.group(4))) for m in rows]
    return table + [table[-1]] * 5


def test_implementation_follows_the_documented_table() -> None:
    backoff = Backoff()
    for n, (base, low, high) in enumerate(documented_schedule()):
        assert backoff.base(n) == base
        assert backoff.bounds(n) == pytest.approx((low, high))


@pytest.mark.parametrize("seed", range(20))
def test_drawn_delays_stay_within_the_documented_bounds(seed: int) -> None:
    rng, backoff = random.Random(seed), Backoff()
    for low, high in ((low, high) for _, low, high in documented_schedule()):
        assert low <= backoff.next_delay(rng) <= high


def test_jitter_spreads_clients() -> None:
    """Two clients that lost the server at once do not come back at the same moment."""
    a, b = Backoff(), Backoff()
    rng_a, rng_b = random.Random(1), random.Random(2)
    pairs = [(a.next_delay(rng_a), b.next_delay(rng_b)) for _ in range(8)]
    assert pairs[0] == (0.0, 0.0)  # the first retry is immediate for both
    assert all(x != y for x, y in pairs[1:])
    assert len({round(x, 3) for x, _ in pairs[1:]}) == 7


def test_a_stable_connection_resets_the_schedule() -> None:
    rng, backoff = random.Random(3), Backoff()
    for _ in range(5):
        backoff.next_delay(rng)
    backoff.connected(100.0)
    backoff.reset_if_stable(100.0 + 60.0)
    assert backoff.next_delay(rng) == 0.0
    assert 0.8 <= backoff.next_delay(rng) <= 1.2


def test_a_flapping_connection_keeps_backing_off() -> None:
    rng, backoff = random.Random(4), Backoff()
    for _ in range(4):          # 0, 1, 2, 4 s
        backoff.next_delay(rng)
    backoff.connected(100.0)
    backoff.reset_if_stable(100.0 + 59.0)   # dropped before it was stable
    assert 6.4 <= backoff.next_delay(rng) <= 9.6
    backoff.reset_if_stable(500.0)          # no connection since: nothing to reset
    assert 12.8 <= backoff.next_delay(rng) <= 19.2


def test_other_parameters_scale_the_schedule() -> None:
    backoff = Backoff(initial=0.5, factor=3.0, cap=10.0, jitter=0.0)
    rng = random.Random(5)
    assert [backoff.next_delay(rng) for _ in range(6)] == [0.0, 0.5, 1.5, 4.5, 10.0, 10.0]
