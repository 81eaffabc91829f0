"""Run the appliance (`python scripts/benchlib/profiled.py serve ...`) with cProfile switched by
signals, for profiling one phase of a benchmark: SIGRTMIN+3 starts profiling the event loop's
thread, SIGRTMIN+4 stops it and writes `$PROFILE_OUT.N.prof` (N counts from 1), for pstats.

    BENCH_PROFILED=1 PROFILE_OUT=/tmp/run scripts/bench --only appliance --scenarios messages
    kill -s RTMIN+3 <server pid>; sleep 10; kill -s RTMIN+4 <server pid>

(SIGUSR1 is the server's own: it logs its statistics.) cProfile's call counts are exact; its
times are inflated about 1.5x for small functions, so compare them with each other only.
"""

from __future__ import annotations

import cProfile
import os
import runpy
import signal
import sys

_profile: cProfile.Profile | None = None
_written = 0


def _start(*_: object) -> None:
    global _profile
    if _profile is None:
        _profile = cProfile.Profile()
        _profile.enable()


def _stop(*_: object) -> None:
    global _profile, _written
    if _profile is not None:
        _profile.disable()
        _written += 1
        _profile.dump_stats(f"{os.environ.get('PROFILE_OUT', 'appliance')}.{_written}.prof")
        _profile = None


if __name__ == "__main__":
    signal.signal(signal.SIGRTMIN + 3, _start)
    signal.signal(signal.SIGRTMIN + 4, _stop)
    sys.argv = ["appliance", *sys.argv[1:]]
    runpy.run_module("appliance", run_name="__main__", alter_sys=True)
