"""What a pause costs the next stanza: `python scripts/benchlib/cold_parse.py [--stanzas N]`.

Parses the benchmark's chat message with the server's own stream parser (`StreamParser.feed`, 20
streams in turn, as 20 connections would) and prints the thread CPU per stanza (as the operating
system counts it) when nothing happens between two stanzas, and after each kind of pause. On a
machine whose idle CPU loses its caches, the same code costs several times more after a sleep:
that is what a server handling one message every few milliseconds pays (docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.proto.xmlstream import StreamParser  # noqa: E402

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='bench.test' version='1.0'>")
MESSAGE = (b"<message to='u2@bench.test' type='chat' id='m-1-%d'><body>Message %d of pair 1: the ship "
           b"docks at six, bring the charts.</body></message>")


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _pauses() -> list[tuple[str, Callable[[], None]]]:
    scratch = bytearray(32 * 1024 * 1024)

    def rewrite() -> None:
        scratch[:] = bytes(len(scratch))
    return [("nothing", lambda: None), ("0.2 ms asleep", lambda: time.sleep(0.0002)),
            ("5 ms busy in a Python loop", lambda: _busy(0.005)), ("5 ms asleep", lambda: time.sleep(0.005)),
            ("32 MB of memory rewritten", rewrite)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stanzas", type=int, default=1000, help="stanzas per kind of pause (1000)")
    stanzas = parser.parse_args().stanzas
    streams = [StreamParser() for _ in range(20)]
    for stream in streams:
        stream.feed(HEADER)
    number = 0
    for label, pause in _pauses():
        spent = 0.0
        for _ in range(stanzas):
            pause()
            number += 1
            data = MESSAGE % (number, number)
            started = time.thread_time()
            streams[number % len(streams)].feed(data)
            spent += time.thread_time() - started
        print(f"{label:30s} {spent / stanzas * 1e6:7.1f} us per stanza")


if __name__ == "__main__":
    main()
