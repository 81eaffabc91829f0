"""What a reader's wake-up costs on the event loop, warm: a ping-pong of 200 bytes over a socket
pair between a trio client and the appliance's Transport, in one Trio run, thread CPU per round
trip (both sides). Three ways for the reader to wait for bytes:

- `timed`: the appliance's way, a deadline watched by net/alarms.py (timed_reads);
- `scoped`: a Trio cancel scope with the deadline around each wait (the appliance's way until the
  fourth round of issue 4);
- `untimed`: no deadline at all (the floor).

Run: `.venv/bin/python scripts/benchlib/wake_cost.py` (20,000 round trips each, twice). It
measures instructions, not a real load's cold caches (see cold_parse.py for those)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's appliance
from appliance.net.transport import Transport  # noqa: E402

ROUND_TRIPS = 20_000


class Scoped(Transport):
    """The reader's wait in a cancel scope of its own (what timed_reads replaced)."""
    __slots__ = ()

    async def _wait_for_bytes(self) -> None:
        with trio.CancelScope(deadline=self.deadline):
            await self._wait_readable()


async def round_trips(kind: str) -> float:
    a, b = trio.socket.socketpair()
    server = (Scoped if kind == "scoped" else Transport)(trio.SocketStream(a))
    client = trio.SocketStream(b)

    async def serve() -> None:
        if kind == "scoped":
            server.reader = trio.lowlevel.current_task()
        with server.timed_reads() if kind == "timed" else trio.CancelScope():
            while True:
                if kind != "untimed":
                    server.deadline = trio.current_time() + 30
                data = await server.receive_some()
                if not data:
                    return
                server.send_now(data)

    message = b"x" * 200
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        for _ in range(1000):  # warm up
            await client.send_all(message)
            await client.receive_some()
        started = time.thread_time()
        for _ in range(ROUND_TRIPS):
            await client.send_all(message)
            await client.receive_some()
        spent = time.thread_time() - started
        await client.aclose()
    return spent / ROUND_TRIPS


def main() -> None:
    for _ in range(2):
        for kind in ("timed", "scoped", "untimed"):
            print(f"{kind:8s} {trio.run(round_trips, kind) * 1e6:6.2f} µs per round trip (both sides)", flush=True)


if __name__ == "__main__":
    main()
