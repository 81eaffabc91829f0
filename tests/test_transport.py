"""appliance/net/transport.py in-process, over socket pairs: plaintext and TLS on the socket, the
reader's deadline (timed_reads, net/alarms.py) that loses nothing and never interrupts what the
reader does between reads, big writes, and the ways a connection ends."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trio.testing

from appliance.net import certs
from appliance.net.alarms import alarms
from appliance.net.transport import Transport

DOMAIN = "transport.test"


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    certs.ensure_certificate(cert, key, DOMAIN)
    return certs.server_context(cert, key), ssl.create_default_context(cafile=str(Path(cert)))


async def pair(contexts=None) -> tuple[Transport, trio.abc.Stream]:
    """The server's Transport and a client stream (trio's own SSLStream when TLS)."""
    a, b = trio.socket.socketpair()
    server, client = Transport(trio.SocketStream(a)), trio.SocketStream(b)
    if contexts is None:
        return server, client
    client = trio.SSLStream(client, contexts[1], server_hostname=DOMAIN)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.start_tls, contexts[0])
        nursery.start_soon(client.do_handshake)
    assert server.tls
    return server, client


async def read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some()
        assert chunk, "closed early"
        data += chunk
    return data


@pytest.mark.parametrize("tls", [False, True])
def test_both_ways(contexts, tls):
    async def main():
        server, client = await pair(contexts if tls else None)
        await client.send_all(b"<presence/>")
        assert await server.receive_some() == b"<presence/>"
        await server.send_all(b"<message/>")
        assert await client.receive_some() == b"<message/>"
        await server.aclose()

    trio.run(main)


class Halting(trio.abc.Stream):
    """The client's TCP stream; can stop one write halfway until `go` is set."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner, self.halt_after, self.halted, self.go = inner, None, trio.Event(), trio.Event()

    async def send_all(self, data) -> None:
        if self.halt_after is not None:
            first, data, self.halt_after = data[:self.halt_after], data[self.halt_after:], None
            await self.inner.send_all(first)
            self.halted.set()
            await self.go.wait()
        await self.inner.send_all(data)

    async def receive_some(self, max_bytes=None):
        return await self.inner.receive_some(max_bytes)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def timed_read(server: Transport, deadline: float) -> bytes | None:
    """One read as the reader does it; None when the deadline passed first."""
    with server.timed_reads():
        server.deadline = deadline
        return await server.receive_some()
    return None


@pytest.mark.parametrize("tls", [False, True])
def test_a_passed_deadline_cancels_the_reads_and_loses_nothing(contexts, tls):
    """Half a TLS record arrives, the deadline passes, the rest arrives: OpenSSL kept the half."""
    async def main():
        a, b = trio.socket.socketpair()
        server, wire = Transport(trio.SocketStream(a)), Halting(trio.SocketStream(b))
        client: trio.abc.Stream = wire
        if tls:
            client = trio.SSLStream(wire, contexts[1], server_hostname=DOMAIN)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.start_tls, contexts[0])
                nursery.start_soon(client.do_handshake)
        started = trio.current_time()
        assert await timed_read(server, started + 0.05) is None
        assert 0.05 <= trio.current_time() - started < 2
        record = b"x" * 3000
        wire.halt_after = 1000
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, record)
            await wire.halted.wait()
            got = b""
            if not tls:
                got = await timed_read(server, trio.current_time() + 5)  # plaintext: 1000 bytes are there
            assert await timed_read(server, trio.current_time() + 0.05) is None
            wire.go.set()
            with server.timed_reads():
                server.deadline = trio.current_time() + 5
                got += await read_exactly(server, len(record) - len(got))
        assert got == record
        server.untimed()

    trio.run(main)


def test_a_deadline_already_passed_cancels_the_next_wait():
    async def main():
        server, client = await pair()
        assert await timed_read(server, trio.current_time() - 1) is None
        await client.send_all(b"<r/>")
        assert await timed_read(server, trio.current_time() - 1) == b"<r/>"  # bytes there: no wait

    trio.run(main)


def test_what_the_reader_does_between_reads_is_never_cancelled():
    """The deadline passes while the reader handles what it read (it may wait on other things
    then): that work runs to its end; only the next wait for bytes is cut short."""
    async def main():
        server, client = await pair()
        await client.send_all(b"<message/>")
        handled = []
        with server.timed_reads() as reads:
            server.deadline = trio.current_time() + 0.05
            data = await server.receive_some()
            await trio.sleep(0.2)  # past the deadline, with checkpoints
            handled.append(data)
            await server.receive_some()
        assert handled == [b"<message/>"] and reads.cancelled_caught

    trio.run(main)


def test_a_deadline_that_moved_later_waits_for_the_new_one():
    """Deadlines mostly move later (every read pushes the idle timeout on): the alarm for the
    old one comes, finds the reader waiting with a later deadline, and waits for that."""
    async def main():
        server, client = await pair()
        await client.send_all(b"<a/>")
        started = trio.current_time()
        with server.timed_reads() as reads:
            server.deadline = started + 0.05
            server._arm()  # the alarm a first wait asks for
            assert await server.receive_some() == b"<a/>"
            server.deadline = started + 0.3
            await server.receive_some()
        assert reads.cancelled_caught and trio.current_time() - started >= 0.3

    trio.run(main)


def test_other_tasks_wait_without_a_deadline():
    async def main():
        server, client = await pair()
        with server.timed_reads():
            server.deadline = trio.current_time() - 1

            async def other() -> None:
                assert await server.receive_some() == b"late"

            async with trio.open_nursery() as nursery:
                nursery.start_soon(other)
                await trio.sleep(0.1)
                await client.send_all(b"late")

    trio.run(main)


def test_many_readers_each_woken_at_its_own_deadline():
    async def main():
        started, woken = trio.current_time(), {}

        async def reader(index: int, server: Transport) -> None:
            assert await timed_read(server, started + 0.02 * (index % 5)) is None
            woken[index] = trio.current_time() - started

        pairs = [await pair() for _ in range(20)]
        async with trio.open_nursery() as nursery:
            for index, (server, _) in enumerate(pairs):
                nursery.start_soon(reader, index, server)
        for index, delay in woken.items():
            assert 0.02 * (index % 5) <= delay < 0.02 * (index % 5) + 1
        assert len(woken) == 20 and len(alarms()) == 0

    trio.run(main)


def test_wake_by_ends_a_waiting_read_sooner(contexts):
    async def main():
        server, client = await pair(contexts)
        outcome = []

        async def reader():
            if await timed_read(server, trio.current_time() + 60) is None:
                outcome.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            server.wake_by(started + 0.05)
        assert outcome and outcome[0] - started < 5

    trio.run(main)


@pytest.mark.parametrize("tls", [False, True])
def test_big_writes_both_ways_at_once(contexts, tls):
    """2 MiB each way at once, far more than the socket buffers hold, the client reading slowly:
    partial writes, and reads and writes of one TLS connection interleaved."""
    async def main():
        server, client = await pair(contexts if tls else None)
        blob = bytes(range(256)) * 8192
        got = {}

        async def drain(name, stream, size):
            data = b""
            while len(data) < len(blob):
                data += await stream.receive_some(size)
                await trio.sleep(0)
            got[name] = data

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, "client", client, 7000)
            nursery.start_soon(drain, "server", server, 65536)
            nursery.start_soon(server.send_all, blob)
            await client.send_all(blob)
        assert got == {"client": blob, "server": blob}

    trio.run(main)


def test_close_notify_reads_as_the_end_and_aclose_sends_one(contexts):
    async def main():
        server, client = await pair(contexts)
        await client.aclose()  # close_notify, then the TCP close
        assert await server.receive_some() == b""
        server2, client2 = await pair(contexts)
        await server2.aclose()
        assert await client2.receive_some() == b""  # a clean end for the client, not an error

    trio.run(main)


@pytest.mark.parametrize("tls", [False, True])
def test_a_cut_link_is_a_broken_resource_over_tls_and_an_end_in_plaintext(contexts, tls):
    async def main():
        server, client = await pair(contexts if tls else None)
        raw = client.transport_stream if tls else client
        await trio.aclose_forcefully(raw)  # TCP close without close_notify
        if tls:
            with pytest.raises(trio.BrokenResourceError):
                await server.receive_some()
        else:
            assert await server.receive_some() == b""
        await trio.aclose_forcefully(server)
        assert server.sock.fileno() == -1

    trio.run(main)


def test_a_failed_handshake_is_a_broken_resource(contexts):
    async def main():
        a, b = trio.socket.socketpair()
        server = Transport(trio.SocketStream(a))
        await trio.SocketStream(b).send_all(b"<stream:stream>  not TLS at all" * 10)
        with pytest.raises(trio.BrokenResourceError):
            await server.start_tls(contexts[0])

    trio.run(main)


@pytest.mark.parametrize("tls", [False, True])
def test_reads_after_one_that_took_everything_wait_first_and_miss_nothing(contexts, tls):
    """After a read that took all there was, the next one waits for readability before reading.
    That is only safe if nothing can hide where the wait does not look: several TLS records sent
    in one write (OpenSSL must not have read ahead past the first one), a record split across
    writes, reads smaller than what arrived, and the end of the stream."""
    async def main():
        server, client = await pair(contexts if tls else None)
        blob = bytes(range(256)) * 160  # 40 KiB: three TLS records in one write
        with trio.fail_after(5):  # a read waiting for bytes already taken in would hang here
            await client.send_all(blob)
            got = await server.receive_some()
            assert server._drained == (len(got) < 65536)
            got += await read_exactly(server, len(blob) - len(got))
            assert got == blob
            await client.send_all(b"<r/>")
            assert await server.receive_some(2) == b"<r"  # less than arrived: not drained
            assert not server._drained
            assert await server.receive_some() == b"/>"
            assert server._drained
            await client.send_all(b"<a h='1'/>")
            assert await server.receive_some() == b"<a h='1'/>"
            await client.aclose()
            assert await server.receive_some() == b""
        await server.aclose()

    trio.run(main)


def test_alarms_after_the_reader_was_woken_and_before_it_ran_change_nothing():
    """The alarm cancels the reads; before the reader runs, another task brings the deadline
    forward (wake_by) and that alarm comes too: the second one must find nothing to do."""
    async def main():
        server, client = await pair()
        outcome = []

        async def reader():
            outcome.append(await timed_read(server, trio.current_time() + 60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            now = trio.current_time()
            server.deadline = now - 1
            server._armed = now - 1
            server.alarm(now - 1, now)  # wakes the reader (it has not run yet)
            server.wake_by(now - 2)
            server.alarm(server._armed, now)
        assert outcome == [None]

    trio.run(main)


def test_a_failing_sleeper_is_logged_and_the_alarms_go_on(caplog):
    class Failing:
        def alarm(self, when: float, now: float) -> None:
            raise RuntimeError("a bug")

    class Counting:
        rung = 0

        def alarm(self, when: float, now: float) -> None:
            self.rung += 1

    async def main():
        counting = Counting()
        now = trio.current_time()
        alarms().at(now, Failing())
        alarms().at(now + 0.01, counting)
        await trio.sleep(0.1)
        assert counting.rung == 1

    trio.run(main)
    assert "an alarm for" in caplog.text and "a bug" in caplog.text
