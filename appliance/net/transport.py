"""One client's TCP connection as a Trio stream, plaintext or TLS, read and written on the socket.

TLS runs on the socket itself (an ssl.SSLSocket in non-blocking mode, waited on with Trio's
wait_readable/wait_writable), not on memory BIOs as trio.SSLStream does: no two BIO buffers that
keep the size of the largest burst for the life of the connection, no locks, and OpenSSL keeps
what it has read or has still to write, so a read given up at a deadline loses nothing.

The reader's deadline (Connection's timers) applies to its waits for bytes only: the reader enters
`timed_reads()` once around its loop, and when `deadline` passes while it waits for bytes, that
scope is cancelled; what it does between reads is never interrupted, and the stream stays usable.
The deadline is watched by net/alarms.py, not by a cancel scope per wait (see there why).
"""

from __future__ import annotations

import errno
import math
import socket
import ssl

import trio

from appliance.net.alarms import alarms

DEFAULT_READ = 65536
_BUSY_POLL = 0.01  # the rare wait another task is already doing on the same socket and direction
_READ, _WRITE = 1, 2


class Transport(trio.abc.Stream):
    __slots__ = ("sock", "deadline", "reader", "_reads", "_armed", "_parked", "_waiting", "_unsent", "_drained")

    def __init__(self, stream: trio.SocketStream) -> None:
        # Trio's socket gives its descriptor up; options set on it (TCP_NODELAY) stay.
        self.sock: socket.socket = socket.socket(fileno=stream.socket.detach())
        self.sock.setblocking(False)
        self.deadline = math.inf
        self.reader: trio.lowlevel.Task | None = None  # the task the deadline applies to
        self._reads: trio.CancelScope | None = None  # the reader's, from timed_reads()
        self._armed = math.inf  # when this transport's live entry in the alarms comes
        self._parked = False  # the reader is waiting for bytes
        self._waiting = 0  # _READ and _WRITE: directions a task waits on the socket in
        self._unsent: memoryview | None = None  # what send_now could not write: send_all's first
        self._drained = False  # the last read took all there was: the next one waits first

    @property
    def tls(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket)

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Server-side TLS handshake on this socket (STARTTLS, or at once for direct TLS)."""
        # Ragged EOFs (TCP closed without close_notify) are errors, as with trio.SSLStream.
        self.sock = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False,
                                        suppress_ragged_eofs=False)
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                self.sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._wait_readable()
            except ssl.SSLWantWriteError:
                await self._wait_writable()
            except OSError as exc:  # ssl.SSLError too
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
        await trio.lowlevel.cancel_shielded_checkpoint()

    def timed_reads(self) -> trio.CancelScope:
        """For the calling task's loop of reads: a cancel scope to enter around it, cancelled when
        `deadline` passes while this task waits for bytes (and only then). Once it has been, the
        reader leaves it, does what is due and enters a new one."""
        self.reader = trio.lowlevel.current_task()
        self._reads = trio.CancelScope()
        return self._reads

    def untimed(self) -> None:
        """The reader's loop is over: no deadline any more."""
        self.deadline, self.reader, self._reads, self._armed = math.inf, None, None, math.inf

    def wake_by(self, deadline: float) -> None:
        """Bring the deadline forward, also for a read already waiting (called from other tasks)."""
        if deadline < self.deadline:
            self.deadline = deadline
            if self._parked:
                self._arm()

    def alarm(self, when: float, now: float) -> None:
        """From net/alarms.py: a time this transport asked for has come."""
        if when != self._armed:
            return  # an entry an earlier one replaced, or the loop is over
        self._armed = math.inf
        if not self._parked or self._reads is None:
            return  # the reader is busy (its next wait asks again), or already woken
        if now >= self.deadline:
            self._reads.cancel()
            self._reads = None  # the reader's wait sees it (cheaper than asking the scope)
        else:
            self._arm()  # the deadline moved on since

    def _arm(self) -> None:
        if self.deadline < self._armed:
            self._armed = self.deadline
            alarms().at(self.deadline, self)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        max_bytes = max_bytes or DEFAULT_READ
        waited = self._drained
        if waited:  # a read now would only fail (a system call and an exception): wait first
            self._drained = False
            await self._wait_for_bytes()
        while True:
            try:
                data = self.sock.recv(max_bytes)  # TLS: what OpenSSL holds comes first
                break
            except (BlockingIOError, ssl.SSLWantReadError):
                await self._wait_for_bytes()
                waited = True
            except ssl.SSLWantWriteError:  # OpenSSL has to answer first (a TLS 1.3 KeyUpdate)
                await self._wait_writable()
                waited = True
            except ssl.SSLZeroReturnError:  # the client's close_notify
                data = b""
                break
            except OSError as exc:
                raise _stream_error(exc) from exc
        if not waited:  # a wait was this call's schedule point; without one, yield here
            await trio.lowlevel.cancel_shielded_checkpoint()
        self._drained = self._took_all(data, max_bytes)
        return data

    def _took_all(self, data: bytes, max_bytes: int) -> bool:
        """Whether a read left nothing behind: fewer bytes than asked for, and (TLS) nothing
        OpenSSL decrypted and kept. Without read-ahead OpenSSL reads one record at a time, so
        anything more is still in the kernel, where the wait for readability sees it at once."""
        if not data or len(data) >= max_bytes:
            return False
        return not self.tls or not self.sock.pending()  # type: ignore[attr-defined]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write `data`, after what send_now left unsent."""
        await trio.lowlevel.checkpoint_if_cancelled()
        after: memoryview | None = memoryview(data)
        waited = False
        while self._unsent is not None or after is not None:
            if self._unsent is None:
                self._unsent, after = after, None
            blocked = self._send_unsent()  # what is unsent stays first in line if a wait is cancelled
            if blocked:
                await self._wait(blocked)
                waited = True
        if not waited:  # a wait was this call's schedule point; without one, yield here
            await trio.lowlevel.cancel_shielded_checkpoint()

    @property
    def has_unsent(self) -> bool:
        return self._unsent is not None

    def send_now(self, data: bytes) -> bool:
        """Write what the socket takes without waiting; True when all of it went. The rest is kept
        and goes first with the next send_all, which must follow (TLS wants the same bytes again).
        Saves a task and two schedule points per write when, as usual, the socket has room."""
        assert self._unsent is None, "send_now while bytes wait for send_all"
        self._unsent = memoryview(data)
        return not self._send_unsent()

    def _send_unsent(self) -> int:
        """Send what is unsent as far as the socket takes it: 0 when all of it went, else the
        direction to wait in (_WRITE, or _READ for a renegotiation, which OpenSSL 3 refuses by
        default) before trying again with the same bytes, as TLS requires."""
        view = self._unsent
        assert view is not None
        while view:
            try:
                view = view[self.sock.send(view):]
            except (BlockingIOError, ssl.SSLWantWriteError):
                self._unsent = view
                return _WRITE
            except ssl.SSLWantReadError:
                self._unsent = view
                return _READ
            except OSError as exc:
                self._unsent = None  # the link is gone: nothing will follow
                raise _stream_error(exc) from exc
        self._unsent = None
        return 0

    async def wait_send_all_might_not_block(self) -> None:
        await self._wait_writable()

    async def aclose(self) -> None:
        """Close, after a TLS close_notify if that can be sent at once (not under aclose_forcefully,
        like trio.SSLStream)."""
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self.tls and self.sock.fileno() >= 0:
                try:
                    self.sock.unwrap()  # sends close_notify; the client's need not be waited for
                except (OSError, ValueError):  # want read/write, a broken link, or already closed
                    pass
        finally:
            if self.sock.fileno() >= 0:
                trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    # ---- waiting on the socket --------------------------------------------------------------------

    async def _wait_for_bytes(self) -> None:
        """The reader waits until its deadline (then its timed_reads() scope is cancelled), others
        as long as it takes."""
        reads = self._reads
        if reads is None or trio.lowlevel.current_task() is not self.reader:
            await self._wait_readable()
            return
        self._arm()
        self._parked = True
        try:
            await self._wait_readable()
        finally:
            self._parked = False
        if self._reads is not reads:  # the alarm came in the same round as the bytes: the deadline wins
            await trio.lowlevel.checkpoint()  # raises Cancelled, caught by the reader's scope

    async def _wait_readable(self) -> None:
        await self._wait(_READ)

    async def _wait_writable(self) -> None:
        await self._wait(_WRITE)

    async def _wait(self, direction: int) -> None:
        # Trio lets one task at a time wait on a socket in one direction; a second one (the writer
        # when a TLS write has to read, while the reader waits anyway) polls instead.
        if self._waiting & direction:
            await trio.sleep(_BUSY_POLL)
            return
        self._waiting |= direction
        try:
            if direction == _READ:
                await trio.lowlevel.wait_readable(self.sock)
            else:
                await trio.lowlevel.wait_writable(self.sock)
        finally:
            self._waiting &= ~direction


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno == errno.EBADF:  # closed under us
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(str(exc))
