"""Run the appliance (`python scripts/benchlib/profiled.py serve ...`) with cProfile switched by
signals, for profiling one phase of a benchmark: SIGRTMIN+3 starts profiling the event loop's
thread, SIGRTMIN+4 stops it and writes `$PROFILE_OUT.N.prof` (N counts from 1), for pstats.

    BENCH_PROFILED=1 PROFILE_OUT=/tmp/run scripts/bench --only appliance --scenarios messages
    kill -s RTMIN+3 <server pid>; sleep 10; kill -s RTMIN+4 <server pid>

cProfile's call counts are exact; its times are inflated about 1.5x for small functions, so compare
them with each other only. The cyclic garbage collector's passes in the same window (count and seconds, per generation), which
cProfile does not see, go to `$PROFILE_OUT.N.gc`.
"""

from __future__ import annotations

import cProfile
import gc
import json
import time

from switched import output, run_appliance  # a sibling: this file runs as a script

_profile: cProfile.Profile | None = None
_written = 0
_gc_passes = [[0, 0.0], [0, 0.0], [0, 0.0]]  # per generation: passes, seconds
_gc_started = 0.0


def _time_gc(phase: str, info: dict) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    elif _profile is not None:
        passes = _gc_passes[info["generation"]]
        passes[0] += 1
        passes[1] += time.perf_counter() - _gc_started


def _start(*_: object) -> None:
    global _profile
    if _profile is None:
        _gc_passes[:] = [[0, 0.0], [0, 0.0], [0, 0.0]]
        _profile = cProfile.Profile()
        _profile.enable()


def _stop(*_: object) -> None:
    global _profile, _written
    if _profile is not None:
        _profile.disable()
        _written += 1
        _profile.dump_stats(output(_written, "prof"))
        _profile = None
        with open(output(_written, "gc"), "w") as file:
            json.dump({"passes_and_seconds_by_generation": _gc_passes, "thresholds": gc.get_threshold()}, file)


if __name__ == "__main__":
    gc.callbacks.append(_time_gc)
    run_appliance(_start, _stop)
