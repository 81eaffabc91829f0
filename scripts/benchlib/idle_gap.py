"""What the same small piece of work costs after the thread has slept: the CPU of one stanza's parse
(the appliance's StreamParser) and serialisation, measured with CLOCK_THREAD_CPUTIME_ID, back to
back and then after sleeps of growing length. On a machine whose idle cores lose their caches
(and TLB, branch predictor, clock speed), work done once per wake-up costs a multiple of its warm
cost; a server at 200 messages a second wakes every 5 ms. Not a test; run it to see the factor
on this machine:

    .venv/bin/python scripts/benchlib/idle_gap.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.proto.stanza import to_stream  # noqa: E402
from appliance.proto.xmlstream import StanzaReceived, StreamParser  # noqa: E402

HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
          b" to='bench.example' version='1.0'>")
MESSAGE = (b"<message to='u2@bench.example' type='chat' id='m123456'><body>message 123 of the benchmark"
           b" run, about as long as a chat line</body><request xmlns='urn:xmpp:receipts'/></message>")
GAPS_MS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0)
ROUNDS = 400


def one_stanza(parser: StreamParser) -> None:
    for event in parser.feed(MESSAGE):
        if isinstance(event, StanzaReceived):
            to_stream(event.element)


def cost_after(gap_ms: float, parser: StreamParser) -> float:
    """Median thread CPU (µs) of one stanza after sleeping `gap_ms`."""
    costs = []
    for _ in range(ROUNDS):
        if gap_ms:
            time.sleep(gap_ms / 1000)
        started = time.thread_time_ns()
        one_stanza(parser)
        costs.append((time.thread_time_ns() - started) / 1000)
    return sorted(costs)[len(costs) // 2]


def main() -> None:
    parser = StreamParser()
    parser.feed(HEADER)
    for _ in range(1000):  # warm
        one_stanza(parser)
    warm = cost_after(0.0, parser)
    print(f"{'sleep before each, ms':>22}  {'CPU per stanza, µs':>18}  {'x warm':>6}")
    for gap in GAPS_MS:
        cost = warm if gap == 0 else cost_after(gap, parser)
        print(f"{gap:22.1f}  {cost:18.1f}  {cost / warm:6.1f}")


if __name__ == "__main__":
    main()
