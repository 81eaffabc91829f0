"""What the profiling wrappers (profiled.py, timed.py) share: run the appliance's command line with
a measurement that SIGRTMIN+3 starts and SIGRTMIN+4 stops, each window written to
`$PROFILE_OUT.N.<kind>` (N counts the windows from 1). Python runs signal handlers in the main
thread, which is the event loop's. (SIGUSR1 is the server's own: it logs its statistics.)"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]


def output(window: int, kind: str) -> str:
    return f"{os.environ.get('PROFILE_OUT', 'appliance')}.{window}.{kind}"


def run_appliance(start: Callable[..., None], stop: Callable[..., None],
                  prepare: Callable[[], None] | None = None) -> None:
    """`prepare` runs first, once the repository's appliance can be imported (to wrap parts of it)."""
    sys.path.insert(0, str(ROOT))  # the repository's appliance, whatever is installed
    if prepare is not None:
        prepare()
    signal.signal(signal.SIGRTMIN + 3, start)
    signal.signal(signal.SIGRTMIN + 4, stop)
    sys.argv = ["appliance", *sys.argv[1:]]
    runpy.run_module("appliance", run_name="__main__", alter_sys=True)
