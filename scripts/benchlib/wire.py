"""What a phone's radio sees: bytes on the wire, counted below TLS, with the time of every read and write.

`CountingStream` sits between a TCP socket stream and `trio.SSLStream`, so what it counts is what
the socket's send/recv moved: TLS records (headers, tags, padding) included, TCP/IP headers not.
`tcp_counters` reads the kernel's segment counters for the socket (TCP_INFO), for the packets.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

import trio

RX, TX = "rx", "tx"


@dataclass
class Wire:
    """Every transfer on one connection: (time, direction, bytes). Times are trio.current_time()."""
    events: list[tuple[float, str, int]] = field(default_factory=list)

    def record(self, direction: str, size: int) -> None:
        if size:
            self.events.append((trio.current_time(), direction, size))

    def window(self, start: float, end: float) -> list[tuple[float, str, int]]:
        return [e for e in self.events if start <= e[0] <= end]


class CountingStream(trio.abc.Stream):
    """A transparent wrapper that records every send and receive on `wire`."""

    def __init__(self, inner: trio.SocketStream, wire: Wire) -> None:
        self.inner = inner
        self.wire = wire

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.wire.record(TX, len(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.wire.record(RX, len(data))
        return bytes(data)

    async def aclose(self) -> None:
        await self.inner.aclose()


def bursts(times: list[float], gap: float) -> int:
    """Distinct bursts of activity: a transfer more than `gap` seconds after the previous one starts a new one."""
    count, last = 0, None
    for t in sorted(times):
        if last is None or t - last > gap:
            count += 1
        last = t
    return count


def radio_on(times: list[float], tail: float, end: float) -> float:
    """Seconds a radio that stays up `tail` seconds after each transfer would be on, up to `end`."""
    total, until = 0.0, None
    for t in sorted(times):
        stop = min(t + tail, end)
        if until is None or t > until:
            total += stop - t
        elif stop > until:
            total += stop - until
        until = stop if until is None else max(until, stop)
    return total


# struct tcp_info (linux/tcp.h): tcpi_segs_out and tcpi_segs_in are the two u32 at offset 136.
_TCP_INFO_SIZE = 232
_SEGS_OFFSET = 136


def tcp_counters(sock: trio.socket.SocketType) -> tuple[int, int] | None:
    """(segments out, segments in) for a TCP socket, pure ACKs included; None where unsupported."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (AttributeError, OSError):
        return None
    if len(info) < _SEGS_OFFSET + 8:
        return None
    segs_out, segs_in = struct.unpack_from("=II", info, _SEGS_OFFSET)
    return segs_out, segs_in
