"""Run the appliance (`BENCH_PROFILED=scripts/benchlib/timed.py scripts/bench ...`) with the CPU
time of the event loop's thread measured around a few synchronous steps of a message's path, as
the operating system counts it (CLOCK_THREAD_CPUTIME_ID), with none of cProfile's overhead:
SIGRTMIN+3 starts a window, SIGRTMIN+4 ends it and writes `$PROFILE_OUT.N.timed` (JSON: step ->
[calls, CPU seconds], plus the whole thread's and the whole process's CPU in the window).

Only synchronous functions are wrapped: the CPU time of an async one would include whatever ran
while it waited.
"""

from __future__ import annotations

import json
import ssl
import time
from collections import defaultdict
from typing import Any, Callable

from switched import output, run_appliance  # a sibling: this file runs as a script

_steps: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])
_window_start = (0.0, 0.0)  # thread CPU, process CPU
_written = 0


def _add(label: str, started: float) -> None:
    """One call of `label`, begun at thread CPU time `started`."""
    step = _steps[label]
    step[0] += 1
    step[1] += time.thread_time() - started


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(label, started)
    return wrapper


def _timed_async(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """For a coroutine that does not suspend on the measured path: if it does, the CPU of what
    ran meanwhile on this thread is counted too (`suspended` counts those calls)."""
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started, steps = time.thread_time(), _step_count[0]
        try:
            return await fn(*args, **kwargs)
        finally:
            _add(label, started)
            if _step_count[0] != steps:
                _steps[label + " (suspended)"][0] += 1
    return wrapper


_step_count = [0]


def _install() -> None:
    from appliance.features import mam
    from appliance.net import c2s, transport
    from appliance.proto import c2s as c2s_proto, xmlstream
    for cls, name in ((c2s_proto.C2SStream, "receive_data"), (xmlstream.StreamParser, "_detach"),
                      (c2s.Connection, "write_now"), (c2s.Connection, "_compose"),
                      (transport.Transport, "send_now"), (mam.Archiver, "_entries"),
                      (mam.Archiver, "_write"), (ssl.SSLSocket, "recv"), (xmlstream.StreamParser, "feed")):
        setattr(cls, name, _timed(f"{cls.__name__}.{name}", getattr(cls, name)))
    from appliance.core import server
    for cls, name in ((c2s.Connection, "_received"), (server.Server, "route"), (server.Server, "emit"),
                      (c2s.Connection, "_route")):
        setattr(cls, name, _timed_async(f"{cls.__name__}.{name}", getattr(cls, name)))
    from appliance.core import router
    add = router.RoutingTable.add

    def add_timed(self: Any, kind: str, namespace: str, handler: Any, **options: Any) -> None:
        """Every routing handler timed as 'hook KIND module.name' (added before the table freezes)."""
        add(self, kind, namespace, _timed_async(f"hook {kind} {router.handler_name(handler)}", handler), **options)
    router.RoutingTable.add = add_timed  # type: ignore[method-assign]


class _TaskSteps:
    """A Trio instrument: the thread CPU spent inside task steps, per task name. What the window's
    thread CPU has beyond their sum is Trio's own scheduling and I/O polling (and this instrument)."""

    def __init__(self) -> None:
        self.started: float | None = None  # None: the window began inside a step

    def before_task_step(self, task: Any) -> None:
        self.started = time.thread_time()

    def after_task_step(self, task: Any) -> None:
        if self.started is None:
            return
        _add(f"task step: {task.name.rsplit('.', 1)[-1]}", self.started)
        _step_count[0] += 1


_instrument = _TaskSteps()


def _start(*_: object) -> None:
    global _window_start
    _steps.clear()
    _window_start = (time.thread_time(), time.process_time())
    _instrument.started = None
    import trio  # the signal handler runs on the event loop's thread, between two of its steps
    trio.lowlevel.add_instrument(_instrument)


def _stop(*_: object) -> None:
    global _written
    import trio
    trio.lowlevel.remove_instrument(_instrument)
    _written += 1
    figures: dict[str, Any] = dict(_steps)
    figures["event_loop_thread"] = [0, time.thread_time() - _window_start[0]]
    figures["process"] = [0, time.process_time() - _window_start[1]]
    with open(output(_written, "timed"), "w") as file:
        json.dump(figures, file, indent=1)


if __name__ == "__main__":
    run_appliance(_start, _stop, prepare=_install)
