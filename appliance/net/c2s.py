"""Client-to-server listeners: STARTTLS on one port, direct TLS (XEP-0368) on another.

One Connection per TCP connection: it feeds bytes to the sans-I/O C2SStream until a resource is
bound, then runs a reader, and a writer while the session's bounded outbox holds something. The
reader also keeps the connection's timers (idle timeout, XEP-0199 pings, XEP-0198 ack requests):
its read waits until the earliest of them is due, so an idle connection costs one sleeping read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import ssl
import time
from collections import Counter
from typing import Any

import trio
from lxml import etree

from appliance.core.server import Server
from appliance.core.session import Session
from appliance.net import sm
from appliance.net.listeners import open_listeners
from appliance.net.transport import Transport
from appliance.proto import c2s, ns
from appliance.proto.errors import StanzaError, StreamError
from appliance.proto.jid import InvalidJID
from appliance.proto.sm import MOD, REQUEST, StreamManagement, failed_xml, parse_h
from appliance.proto.stanza import Element, make, stream_header, to_stream
from appliance.store.db import PendingWrite

log = logging.getLogger("appliance.c2s")
READ_SIZE = 65536
CONNECTION_LOST = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
WRITE_BATCH = 64
GOODBYE_SECONDS = 2.0  # how long a closing stream may take to write what is queued
COUNTED_WAIT_SECONDS = 5.0  # a resumption waits at most this long for the old reader to count its stanzas
PARSER_IDLE_SECONDS = 30.0  # a client silent this long between stanzas: its XML parser is released
ROOM_WAIT_SECONDS = 1.0  # a reader waits this long for room for its client's answers (see _room_for_answers)
TRIM_DELAY = 10.0           # freed memory goes back to the system this long after a release...
TRIM_EVERY = 60.0           # ...and at most this often


class C2SService:
    """Owns the listeners, the per-address connection counts and the live connections."""

    def __init__(self, server: Server, tls: ssl.SSLContext | None, channel_binding: tuple[str, bytes] | None) -> None:
        self.server = server
        self.tls = tls
        self.channel_binding = channel_binding
        self.per_address: Counter[str] = Counter()
        self.connections: set[Connection] = set()
        self.hibernation = sm.Hibernation(server)
        # Writes made while a reader routes a stanza wait for the end of that stanza, then go out
        # together from that task (one TLS record and send per connection, not one per push).
        self.deferring: set[trio.lowlevel.Task] = set()
        self.dirty: list[Connection] = []
        self._trim_pending = False
        self._last_trim = -math.inf
        server.add_stream_feature(sm.stream_feature)
        # Shared by every connection's settings (features register their namespaces before this).
        self.preauth_namespaces = frozenset(server.preauth)
        self.nonza_namespaces = frozenset({ns.SM, *server.nonza})

    # ---- memory of idle connections ---------------------------------------------------------------
    #
    # A silent connection releases its XML parser (StreamParser.release), but glibc keeps freed
    # memory inside its heap, resident, until malloc_trim: that runs here, in a worker thread, a
    # while after the first release and at most once a minute (it takes milliseconds).

    @property
    def nursery(self) -> trio.Nursery | None:
        """The service's nursery (app.py's), for tasks that outlive no connection but belong to none
        alone: writers, hibernating sessions, the memory trim."""
        return self.hibernation.nursery

    def parser_released(self) -> None:
        if not self._trim_pending and self.nursery is not None:
            self._trim_pending = True
            self.nursery.start_soon(self._trim_later)

    async def _trim_later(self) -> None:
        await trio.sleep_until(max(trio.current_time() + TRIM_DELAY, self._last_trim + TRIM_EVERY))
        self._trim_pending = False
        self._last_trim = trio.current_time()
        started = time.perf_counter()
        await trio.to_thread.run_sync(_malloc_trim)  # the event loop goes on meanwhile
        log.debug("gave freed memory back to the system in %.1f ms", (time.perf_counter() - started) * 1000)

    def flush_dirty(self) -> None:
        """Write what the deferred pushes queued (see Connection._write_soon)."""
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            for connection in dirty:
                connection.write_now()

    async def listen(self, port: int, *, direct_tls: bool,
                     task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await open_listeners(self.server.config.listen, port, "clients")
        ports = sorted({l.socket.getsockname()[1] for l in listeners})
        log.info("listening for clients on port %s (%s)", ports, "direct TLS" if direct_tls else "STARTTLS")
        task_status.started(ports)
        await trio.serve_listeners(lambda s: self._accept(s, direct_tls), listeners)

    async def _accept(self, stream: trio.SocketStream, direct_tls: bool) -> None:
        address = stream.socket.getpeername()[0]
        if self.per_address[address] >= self.server.config.limits.connections_per_address:
            log.warning("refusing a connection from %s: too many connections from that address", address)
            await _refuse(stream, self.server.domain, direct_tls)
            return
        self.per_address[address] += 1
        connection = Connection(self, stream, address, direct_tls)
        self.connections.add(connection)
        try:
            await connection.run()
        except Exception:  # a bug in one connection must never take the server down
            log.exception("%s: internal error; connection dropped", connection.who)
        finally:
            self.connections.discard(connection)
            self.per_address[address] -= 1
            if not self.per_address[address]:
                del self.per_address[address]

    async def shutdown(self, grace: float = 5.0) -> None:
        """Close every stream with system-shutdown and wait (bounded) for them to finish."""
        for connection in list(self.connections):
            connection.terminate(StreamError("system-shutdown", "the server is shutting down"))
        with trio.move_on_after(grace):
            while self.connections:
                await trio.sleep(0.05)
        await self.hibernation.end_all()


def _load_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _malloc_trim() -> None:
    """Give the heap's free pages back to the system (glibc keeps them otherwise)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _refuse(stream: trio.SocketStream, domain: str, direct_tls: bool) -> None:
    """Too many connections: a stream error where we can say it cheaply (plaintext), else just close."""
    with trio.move_on_after(2):
        try:
            if not direct_tls:
                error = StreamError("policy-violation", "too many connections from your address")
                await stream.send_all(stream_header(from_=domain, id_="refused") + error.to_xml()
                                      + b"</stream:stream>")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


class _Outbox:
    """What a session has yet to write, in order: stanzas, and bytes (stream management answers,
    the stream's end). Bounded: a full outbox means a client that reads too slowly."""

    __slots__ = ("items", "limit", "closed", "_room")

    def __init__(self, limit: int) -> None:
        self.items: list[bytes | Element] = []
        self.limit = limit
        self.closed = False
        self._room: trio.lowlevel.ParkingLot | None = None  # tasks waiting in put_wait, once there were any

    def put(self, item: bytes | Element) -> bool:
        if self.closed or len(self.items) >= self.limit:
            return False
        self.items.append(item)
        return True

    async def put_wait(self, item: bytes | Element) -> bool:
        """Put, waiting while the outbox is full; False once it is closed."""
        await trio.lowlevel.checkpoint()
        await self.room()
        return self.put(item)

    async def room(self) -> None:
        """Wait while the outbox is full (not at all once it is closed)."""
        while not self.closed and len(self.items) >= self.limit:
            if self._room is None:
                self._room = trio.lowlevel.ParkingLot()
            await self._room.park()

    def take(self, count: int) -> list[bytes | Element]:
        batch = self.items[:count]
        del self.items[:count]
        if self._room is not None:
            self._room.unpark_all()
        return batch

    def close(self) -> None:
        """No more puts; what is in it can still be taken."""
        self.closed = True
        if self._room is not None:
            self._room.unpark_all()


class Connection:
    # Slots: one per connection, thousands idle; past 30 attributes an instance __dict__ stops
    # sharing its keys and costs ~2.5 KiB more (measured: 46.8 -> 49.5 KB per idle TLS session).
    __slots__ = ("service", "server", "transport", "stream", "address", "direct_tls", "session", "scope",
                 "reader_scope", "close_error", "last_heard", "_ping_asked", "_ack_from", "_ack_at",
                 "_parser_idle_at", "preauth_state", "_in_flight", "_gate", "_gated", "_in_route",
                 "_route_done", "clean_close", "resumed_elsewhere", "auth", "outbox", "_serving", "_writing",
                 "_dirty", "_writer_scope", "_write_error", "_drained", "proto")

    def __init__(self, service: C2SService, stream: trio.SocketStream, address: str, direct_tls: bool) -> None:
        self.service = service
        self.server = service.server
        self.transport = Transport(stream)
        self.stream = self.transport  # plaintext, then TLS on the same socket
        self.address = address
        self.direct_tls = direct_tls
        self.session: Session | None = None
        self.scope = trio.CancelScope()
        self.close_error: StreamError | None = None
        self.last_heard = trio.current_time()  # the last byte from the client
        self._ping_asked: float | None = None  # XEP-0199: when the unanswered ping went out
        self._ack_from = 0.0                    # ack-request checks fall every request_seconds from here
        self._ack_at = math.inf                 # the next ack-request check, when one is wanted
        self._parser_idle_at = math.inf         # when to release the XML parser of a silent client
        self.preauth_state: dict[str, Any] = {"address": address}
        self._in_flight: list[Element] = []
        self._gate: PendingWrite | None = None   # XEP-0198: stanzas after it count once it commits
        self._gated = 0                          # routed stanzas waiting for the gate to be counted
        self._in_route = False                   # the reader is routing a stanza (counted() waits)
        self._route_done: trio.Event | None = None  # made by counted() while a stanza is routed
        self.clean_close = False          # the client ended the stream itself
        self.resumed_elsewhere = False    # XEP-0198: another connection took the session over
        self.auth = self.server.auth.for_connection(address)
        self.outbox = _Outbox(self.server.config.limits.outbox_stanzas)
        self._serving = False                      # bound and not closing: writers may start
        self._writing = False                      # a writer task is draining the outbox
        self._dirty = False                        # in service.dirty: a deferred write is due
        self._writer_scope: trio.CancelScope | None = None  # the running writer's
        self._write_error: Exception | None = None  # what ended the writer, for the reader to raise
        self._drained: trio.Event | None = None    # set when the writer stops, once the stream closes
        self.proto = c2s.C2SStream(self._settings(), tls_active=direct_tls)

    def _settings(self) -> c2s.Settings:
        config, server = self.server.config, self.server
        return c2s.Settings(
            domain=server.domain, credentials=self.auth,
            tls_available=self.service.tls is not None, tls_required=config.require_tls,
            max_stanza_bytes=config.limits.max_stanza_bytes, max_depth=config.limits.max_depth,
            channel_binding=self.service.channel_binding,
            preauth_namespaces=self.service.preauth_namespaces,
            nonza_namespaces=self.service.nonza_namespaces,
            extra_features=lambda stage: server.features_for(stage, self.session),
            auth_allowed=self.auth.allowed,
        )

    # ---- lifecycle ------------------------------------------------------------------------------
    #
    # Closing is ordered so that nothing queued is lost: the reader stops (end of stream, stream
    # error, idle, or terminate() from another task), the stream error or close goes to the back of
    # the outbox, the writer drains it all (bounded in time), and only what could not be written
    # is handed back to the router.

    def terminate(self, error: StreamError | None) -> None:
        """Close this connection from anywhere (another session's task, shutdown): stop reading, say why."""
        if self.close_error is None:
            self.close_error = error
        self.scope.cancel()
        self.reader_scope.cancel()

    async def run(self) -> None:
        log.debug("connection from %s", self.address)
        self.reader_scope = trio.CancelScope()
        bound = False
        try:
            with self.scope:
                bound = await self._negotiate_in_time()
            if bound and not self.scope.cancelled_caught:
                await self._serve_bound()
        except* CONNECTION_LOST as group:
            log.info("%s: connection lost (%s)", self.who, _first_leaf(group).__class__.__name__)
        finally:
            await self._finish()

    async def _serve_bound(self) -> None:
        self._serving = True
        try:
            self._write_soon()  # what a resumption sends again, what features sent at bind
            with self.reader_scope:
                await self._read_loop()
            self._raise_write_error()
            self._end_stream()
            self.outbox.close()
            await self._stop_writer(GOODBYE_SECONDS)
            self._raise_write_error()
        finally:
            self._serving = False

    async def _stop_writer(self, patience: float) -> None:
        """Let a running writer drain the outbox for up to `patience` seconds, then stop it, and
        return once it has stopped: what it never wrote is then settled (see _unwritten)."""
        if not self._writing:
            return
        if self._drained is None:
            self._drained = trio.Event()
        with trio.move_on_after(patience):
            await self._drained.wait()
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        with trio.CancelScope(shield=True):  # it stops at its next checkpoint, i.e. at once
            await self._drained.wait()

    def _raise_write_error(self) -> None:
        """A writer's failure (a lost link; a bug) ends the connection as the reader's would."""
        if self._write_error is not None:
            error, self._write_error = self._write_error, None
            raise error

    def _end_stream(self) -> None:
        if self.close_error is not None:
            self.proto.fail(self.close_error)
        else:
            self.proto.close()
        data = self.proto.data_to_send()
        if data:
            # A full outbox: this client is not reading anyway. Closed: the session moved on.
            self._push_bytes(data)

    @property
    def who(self) -> str:
        return str(self.session.jid) if self.session else self.address

    async def _negotiate_in_time(self) -> bool:
        with trio.move_on_after(self.server.config.limits.handshake_timeout):
            if self.direct_tls:
                await self._start_tls()
            return await self._negotiate()
        log.info("%s: did not finish logging in within %.0f s", self.address,
                 self.server.config.limits.handshake_timeout)
        self.close_error = StreamError("connection-timeout", "login took too long")
        return False

    async def _finish(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stop_writer(0)  # if the connection was cancelled from outside (shutdown)
            if self.session is None:
                await self._goodbye_before_bind()
            elif self.resumed_elsewhere:
                pass  # the session lives on in another connection
            elif self._may_hibernate():
                await self.counted()  # the <resumed h=.../> must include what waited for a commit
                self.service.hibernation.hibernate(self.session, self._unwritten())
            else:
                await self.server.end_session(self.session, self._unwritten())
            await self._close_transport()
            self.proto.release_parser()  # a stream cut mid-document: free lxml's parser now, not at a full gc
            log.info("%s: disconnected%s", self.who, f" ({self.close_error})" if self.close_error else "")

    def _may_hibernate(self) -> bool:
        """XEP-0198: keep a resumable session whose link failed; not one that was ended on purpose."""
        session = self.session
        if session is None or session.sm is None or not session.sm.resumable or self.clean_close:
            return False
        return self.close_error is None or self.close_error.condition not in (
            "conflict", "not-authorized", "system-shutdown", "undefined-condition")

    def surrender(self) -> list[Element]:
        """Another connection resumed this session: stop here and hand over what was never written
        (what was written but not acknowledged is in session.sm.unacked already)."""
        self.resumed_elsewhere = True
        unsent = self._unwritten()
        self.terminate(None)
        return unsent

    async def _close_transport(self) -> None:
        """Read what the client still sends after our close (its </stream:stream>, its TLS
        close_notify), briefly and boundedly: closing with unread bytes makes the kernel answer
        with a TCP reset, which clients report as an error on a clean logout."""
        with trio.move_on_after(GOODBYE_SECONDS):
            try:
                budget = READ_SIZE
                while budget > 0 and (data := await self.stream.receive_some(4096)):
                    budget -= len(data)
            except (*CONNECTION_LOST, trio.BusyResourceError):
                pass
        await trio.aclose_forcefully(self.stream)

    async def _goodbye_before_bind(self) -> None:
        if self.close_error is not None:
            self.proto.fail(self.close_error)
        data = self.proto.data_to_send()
        if data:
            with trio.move_on_after(GOODBYE_SECONDS):
                try:
                    await self.stream.send_all(data)
                except (*CONNECTION_LOST, trio.BusyResourceError):
                    pass

    def _unwritten(self) -> list[Element]:
        """Stanzas the writer never got to; they go round again (other resource, offline, bounce)."""
        self.outbox.close()
        left, self._in_flight = self._in_flight, []
        return left + [item for item in self.outbox.take(len(self.outbox.items)) if not isinstance(item, bytes)]

    # ---- negotiation (request/response: the reader writes directly) -------------------------------

    async def _negotiate(self) -> bool:
        while self.proto.stage is not c2s.Stage.BOUND:
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                return False
            self.last_heard = trio.current_time()
            events = self.proto.receive_data(data)
            await self._flush()
            for event in events:
                if not await self._negotiation_event(event):
                    return False
            await self._flush()
        return True

    async def _flush(self) -> None:
        data = self.proto.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def _negotiation_event(self, event: c2s.Event) -> bool:
        match event:
            case c2s.StartTLS():
                await self._start_tls()
                self.proto.tls_started()
            case c2s.Authenticated(username=username, mechanism=mechanism):
                self.auth.succeeded(username)
                log.info("%s authenticated as %s with %s", self.address, username, mechanism)
            case c2s.AuthFailed(username=username, condition=condition):
                self.auth.failed(username)
                log.warning("%s failed to authenticate as %s (%s)", self.address, username or "?", condition)
            case c2s.PreAuthIQ(iq=iq):
                namespace = etree.QName(iq[0]).namespace
                self.proto.send_stanza(await self.server.preauth[namespace](iq, self.preauth_state))
            case c2s.BindRequested(iq=iq, resource=resource):
                await self._bind(iq, resource)
            case c2s.NonzaIn(element=element):
                await self._nonza_before_bind(element)
            case c2s.Closed(error=error):
                if error is not None:
                    log.info("%s: stream error %s (%s)", self.address, error.condition, error.text)
                return False
        return True

    async def _start_tls(self) -> None:
        assert self.service.tls is not None
        await self.transport.start_tls(self.service.tls)
        log.debug("%s: TLS established", self.address)

    async def _bind(self, iq: Element, resource: str | None) -> None:
        assert self.proto.username is not None
        try:
            self.session = await self.server.bind(self.proto.username, resource, self.address,
                                                  self._push, self.terminate, self._push_wait)
        except InvalidJID as exc:
            self.proto.bind_failed(iq, StanzaError("bad-request", f"invalid resource: {exc}"))
            return
        self.session.link = self
        self.proto.bind_succeeded(iq, str(self.session.jid))

    async def _nonza_before_bind(self, element: Element) -> None:
        if sm.is_sm(element) and sm.local(element) == "resume":
            await self._resume(element)
        elif sm.is_sm(element):  # (stray <r/> and <a/> never get here: proto.c2s drops them)
            self.proto.send_raw(failed_xml("unexpected-request"))  # <enable/> comes after bind

    async def _resume(self, element: Element) -> None:
        session, h = sm.find_resumable(self, element)
        if session is None:
            self.proto.send_raw(failed_xml("item-not-found"))
            log.info("%s: nothing to resume for %s", self.address, self.proto.username)
            return
        old = session.link
        queued = sm.take_over(self, session)
        if old is not None:
            await old.counted()  # its last stanzas may still be waiting for their commit
        again = session.sm.resume_from(h) + queued
        self.session = session
        session.push, session.push_wait, session.terminate = self._push, self._push_wait, self.terminate
        session.link, session.closing = self, False
        self.proto.resumed()
        self.proto.send_raw(session.sm.resumed_xml(element.get("previd", "")))
        if len(again) > self.outbox.limit:
            self.outbox.limit = len(again) * 2
        for stanza in again:
            self.outbox.put(stanza)
        log.info("%s resumed from %s; sending %d stanzas again", session.jid, self.address, len(again))

    # ---- bound: reader, writer, keepalive ------------------------------------------------------------

    def _push(self, stanza: Element) -> bool:
        if not self.outbox.put(stanza):
            if self._writing or self.outbox.closed or not self.outbox.items:
                return False
            self.write_now()  # full only because its writes were deferred (see _write_soon)?
            if not self.outbox.put(stanza):
                return False
        self._write_soon()
        return True

    async def _push_wait(self, item: bytes | Element) -> bool:
        if len(self.outbox.items) >= self.outbox.limit:
            self.service.flush_dirty()  # a deferred write may be what would make room
        if not await self.outbox.put_wait(item):
            return False
        self._write_soon()
        return True

    async def _answer(self, data: bytes) -> None:
        """An answer to what the client has just sent (<a/>, <enabled/>, negotiation): into the
        outbox at once when it has room, without the schedule point of put_wait (the read that
        brought the question was one), else waiting for room."""
        if self.outbox.put(data):
            self._write_soon()
        else:
            await self._push_wait(data)

    async def _room_for_answers(self) -> None:
        """Before the reader routes a stanza: if the client's outbox is full of what it has not
        been offered yet (the reader's own deferred writes, a writer that has not run: a burst of
        patient answers leaves it so), let the writer make room, for ROOM_WAIT_SECONDS at most, so
        that the answer to this stanza does not judge the client a slow reader for bytes never
        sent. A client that does not read stays full, and is judged so by that answer."""
        if len(self.outbox.items) < self.outbox.limit:
            return
        self.service.flush_dirty()
        with trio.move_on_after(ROOM_WAIT_SECONDS):
            await self.outbox.room()

    async def _read_loop(self) -> None:
        self._ack_from = trio.current_time()
        self._parser_idle_at = self.last_heard + PARSER_IDLE_SECONDS
        try:
            while True:
                with self.transport.timed_reads():
                    await self._read_until_over()
                    return
                # The deadline passed while the reader waited for bytes (only then is the scope
                # cancelled: never between a read and the end of what it brought).
                if self._deadline_passed(trio.current_time()):
                    return
        finally:
            self.transport.untimed()

    async def _read_until_over(self) -> None:
        now = trio.current_time()
        while True:
            # `now` may be a stanza's handling old: a deadline it puts in the past is simply due
            self.transport.deadline = self._next_deadline(now)
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                return
            self.last_heard = now = trio.current_time()
            self._parser_idle_at = now + PARSER_IDLE_SECONDS
            if await self._received(data):
                return

    async def _received(self, data: bytes) -> bool:
        """Handle what the client sent; True when the stream is over.

        A stanza counts as handled (XEP-0198) once the writes it queued have committed, but the
        reader does not wait for that commit: a stanza with writes becomes the *gate* of the count
        and the stanzas after it count behind it (`_count_after`). The count is brought up to date
        -- waiting for the gate's commit -- only where it is reported or ends: before any nonza,
        at the end of the stream, and when a resumption takes the session over (`counted`). An
        <r/> is the exception: its answer is written when the gate's commit is done, by the task
        that finishes it, while the reader goes on (`_answer_when_durable`). So a reader never
        waits for the disk between stanzas, a burst shares its commits, and nothing is
        acknowledged before it is durable."""
        events = self.proto.receive_data(data)
        pending = self.proto.data_to_send()
        if pending:
            await self._answer(pending)
        for event in events:
            if isinstance(event, c2s.StanzaIn):
                await self._room_for_answers()
                writes: list[PendingWrite] = []
                await self._route(event.stanza, writes)
                self._count_after(writes)
                continue
            if isinstance(event, c2s.NonzaIn) and self._answer_when_durable(event.element):
                continue
            if self._gated:  # stanzas wait for a commit to be counted: settle them first
                await self._count_all()  # its only wait, Database.settle's, is shielded
            if isinstance(event, c2s.NonzaIn):
                try:
                    await self._nonza(event.element)
                except StreamError as error:
                    self.close_error = error
                    return True
            elif isinstance(event, c2s.Closed):
                self.close_error = self.close_error or event.error
                self.clean_close = event.error is None
                return True
        return False

    async def _route(self, stanza: Element, writes: list[PendingWrite]) -> None:
        """Route one stanza, deferring the writes it causes to its end (see _write_soon)."""
        service, task = self.service, trio.lowlevel.current_task()
        service.deferring.add(task)
        self._in_route = True
        try:
            await self.server.route(stanza, self.session, writes=writes)
        finally:
            self._in_route = False
            service.deferring.discard(task)
            service.flush_dirty()
            if self._route_done is not None:
                self._route_done.set()
                self._route_done = None

    def _count_after(self, writes: list[PendingWrite]) -> None:
        """A routed stanza: count it now, or behind the gate (the last write queued so far)."""
        gate = writes[-1] if writes else self._gate
        if gate is None or gate.finished:
            stanzas, self._gated, self._gate = self._gated + 1, 0, None
            self._count(stanzas)
        else:
            self._gate = gate
            self._gated += 1

    async def _count_all(self) -> None:
        """Wait for the gate's commit and count what waited behind it. Commits are in order, so a
        finished gate means every write queued before it is durable too."""
        while self._gated:
            gate = self._gate
            if gate is not None and not gate.finished:
                await self.server.settle([gate])  # a failed write is logged; the stanza still counts
            if self._gate is gate:  # no newer gate meanwhile: everything gated is behind this one
                stanzas, self._gated, self._gate = self._gated, 0, None
                self._count(stanzas)

    def _answer_when_durable(self, element: Element) -> bool:
        """An <r/> while stanzas wait behind a gate: their count is answered once the gate's
        commit is done, by the task that finishes it, and this reader goes on reading instead of
        waiting for the disk (a phone asks after every message). True when it is so handled.
        Answers stay in order: commits are, and a later <r/> counts at least as many."""
        session, gate = self.session, self._gate
        state = session.sm if session is not None else None
        if state is None or gate is None or gate.finished or not sm.is_sm(element) or sm.local(element) != "r":
            return False
        h = (state.handled + self._gated) % MOD
        self.server.db.after(gate, lambda: self._answer_durable(state, h))
        return True

    def _answer_durable(self, state: StreamManagement, h: int) -> None:
        if self._serving and self.session is not None and self.session.sm is state:
            self._push_bytes(state.ack_xml(h))  # a full outbox closes the session anyway

    def _count(self, stanzas: int) -> None:
        state = self.session.sm if self.session is not None else None
        if state is not None:
            for _ in range(stanzas):
                state.received()

    async def counted(self) -> None:
        """Bring the count up to date (boundedly): a resumption that takes the session over must
        report in its <resumed h=.../> every stanza this connection handled, including one its
        reader is routing right now."""
        with trio.move_on_after(COUNTED_WAIT_SECONDS):
            if self._in_route:
                self._route_done = self._route_done or trio.Event()
                await self._route_done.wait()
            await self._count_all()

    # ---- bound: the reader's timers ------------------------------------------------------------------
    #
    # One deadline for the read: the earliest of the idle timeout, the next XEP-0199 ping (or the end
    # of the wait for its answer), the next XEP-0198 ack-request check and the release of the XML
    # parser of a silent client. When it passes, what is due is done and the read starts again.

    def _next_deadline(self, now: float) -> float:
        if self._ack_wanted():
            if self._ack_at == math.inf:
                self._ack_at = self._next_ack_check(now)
        else:
            self._ack_at = math.inf
        return min(self.last_heard + self.server.config.limits.idle_timeout,
                   self._keepalive_deadline(), self._ack_at, self._parser_idle_at)

    def _deadline_passed(self, now: float) -> bool:
        """Do what is due; True when the connection must end."""
        if now >= self.last_heard + self.server.config.limits.idle_timeout:
            self.close_error = StreamError("connection-timeout", "idle for too long")
            return True
        if self._keepalive_due(now):
            return True
        if now >= self._ack_at:
            self._ack_at = math.inf
            self._request_ack(now)
        if now >= self._parser_idle_at:
            self._parser_idle_at = math.inf  # released, or mid-stanza: either way, wait for bytes
            if self.proto.release_parser():
                log.debug("%s: silent for %.0f s; XML parser released", self.who, now - self.last_heard)
                self.service.parser_released()
        return False

    def _keepalive_deadline(self) -> float:
        keepalive, asked = self.server.config.keepalive, self._ping_asked
        if asked is None:
            return self.last_heard + keepalive.ping_interval
        if self.last_heard < asked:  # no answer yet: the link is dead then
            return asked + keepalive.ping_timeout
        # Answered: the next ping once the client is silent again, not before the wait has ended.
        return max(asked + keepalive.ping_timeout, self.last_heard + keepalive.ping_interval)

    def _keepalive_due(self, now: float) -> bool:
        """XEP-0199: ping a silent client; no byte back within the timeout means the link is dead.
        What is due follows from _keepalive_deadline: an unanswered ping's end, or the next ping."""
        if now < self._keepalive_deadline():
            return False
        asked = self._ping_asked
        if asked is not None and self.last_heard < asked:
            timeout = self.server.config.keepalive.ping_timeout
            log.info("%s: no answer to ping in %.0f s; the link is dead", self.who, timeout)
            self.close_error = self.close_error or StreamError("connection-timeout", "no answer to ping")
            return True
        assert self.session is not None
        ping = make("iq", to=self.session.jid, from_=self.server.domain, type_="get", id_=f"ping-{now:.0f}")
        etree.SubElement(ping, f"{{{ns.PING}}}ping", nsmap={None: ns.PING})
        self._push(ping)
        self._ping_asked = now
        return False

    def _ack_wanted(self) -> bool:
        """XEP-0198: stanzas wait unacknowledged and no <r/> is out for them."""
        state = self.session.sm if self.session is not None else None
        return state is not None and state.counting and bool(state.unacked) and not state.request_pending

    def _next_ack_check(self, now: float) -> float:
        every = max(self.server.config.stream_management.request_seconds, 0.01)
        return self._ack_from + ((now - self._ack_from) // every + 1) * every

    def _arm_ack_check(self) -> None:
        """Called by the writer after a write: the reader's read may have to end sooner."""
        if self._ack_at == math.inf and self._ack_wanted():
            self._ack_at = self._next_ack_check(trio.current_time())
            self.transport.wake_by(self._ack_at)

    def _request_ack(self, now: float) -> None:
        """Ask for an ack when stanzas have waited unacknowledged since the last check."""
        session = self.session
        assert session is not None
        if not self._ack_wanted():
            return
        if session.gate is not None:
            return  # inactive: never wake the phone just to ask; the next write asks
        session.sm.request_pending = True
        self._push_bytes(REQUEST)

    async def _nonza(self, element: Element) -> None:
        session = self.session
        assert session is not None
        if not sm.is_sm(element):
            handler = self.server.nonza.get(etree.QName(element).namespace or "")
            if handler is not None:
                await handler(session, element)
            return
        name = sm.local(element)
        if name == "enable":
            await self._answer(sm.enable(self, element))
        elif name == "r" and session.sm is not None:
            await self._answer(session.sm.ack_xml())
        elif name == "a" and session.sm is not None:
            await self.server.confirm(session, session.sm.ack(parse_h(element)))
        elif name == "resume":
            await self._answer(failed_xml("unexpected-request"))
        # <r/> and <a/> without stream management: nothing to count or settle, ignored (see proto.c2s)

    def _write_soon(self) -> None:
        """Write what the outbox holds: at once from the calling task when the socket has room
        (a write that would wait, and one before stream management counts, goes to a writer task);
        deferred to the end of the stanza when the caller is a reader routing one. A writer task
        runs in the service's nursery (a nursery per connection would cost every idle one), so it
        hands its failure to the reader, and the reader waits for it before going."""
        if not self._write_due():
            return
        service = self.service
        if service.deferring and trio.lowlevel.current_task() in service.deferring:
            if not self._dirty:
                self._dirty = True
                service.dirty.append(self)
            return
        self.write_now()

    def _write_due(self) -> bool:
        """Something to write, and nobody writing it yet (an idle or closing connection has no writer)."""
        return bool(self.outbox.items) and not self._writing and self._serving and self.service.nursery is not None

    def write_now(self) -> None:
        self._dirty = False
        if not self._write_due():
            return
        session = self.session
        if session is None or session.sm is None or not session.sm.counting or self.transport.has_unsent:
            # Uncounted stanzas: the writer hands them back if the link fails. Bytes left by a
            # cancelled writer: they go first, and only send_all sends them.
            self._start_writer()
            return
        try:
            data, _ = self._compose(session, self.outbox.take(WRITE_BATCH))
            done = self.transport.send_now(data)
        except Exception as error:  # a lost link, or a bug: the reader raises it, as a writer's
            self._write_error = error
            self.reader_scope.cancel()
            return
        self._arm_ack_check()
        if not done or self.outbox.items:
            self._start_writer()

    def _start_writer(self) -> None:
        assert self.service.nursery is not None
        self._writing = True
        self._writer_scope = trio.CancelScope()
        self.service.nursery.start_soon(self._write_loop)

    async def _write_loop(self) -> None:
        try:
            with self._writer_scope:
                if self.transport.has_unsent:
                    await self.stream.send_all(b"")
                while self.outbox.items:
                    await self._write_batch(self.outbox.take(WRITE_BATCH))
        except Exception as error:  # a lost link, or a bug: the reader raises it (CONNECTION_LOST, ...)
            self._write_error = error
            self.reader_scope.cancel()
        finally:
            self._writing = False  # no checkpoint since the outbox was seen empty: nothing is left behind
            self._writer_scope = None
            if self._drained is not None:
                self._drained.set()

    async def _write_batch(self, batch: list[bytes | Element]) -> None:
        session = self.session
        assert session is not None
        data, uncounted = self._compose(session, batch)
        # Until send_all returns, uncounted stanzas may not have left: if it is cancelled they are
        # handed back to the router (a possible duplicate beats a silent loss).
        self._in_flight = uncounted
        await self.stream.send_all(data)
        self._in_flight = []
        self._arm_ack_check()
        if uncounted:  # no stream management: written is as delivered as we can know
            await self.server.confirm(session, uncounted)

    def _compose(self, session: Session, batch: list[bytes | Element]) -> tuple[bytes, list[Element]]:
        """The bytes of a batch, with an ack request when one is due; stanzas are counted
        (XEP-0198) as they are handed over, and those that cannot be are returned."""
        chunks: list[bytes] = []
        uncounted: list[Element] = []
        for item in batch:
            if isinstance(item, bytes):
                chunks.append(item)
                if isinstance(item, sm.SmEnabled):
                    session.sm.counting = True
                continue
            chunks.append(to_stream(item))
            if session.sm is not None and session.sm.counting:
                session.sm.sending(item)  # counted as it is handed over; an ack or a resume settles it
            else:
                uncounted.append(item)
        if self._should_request(session):
            chunks.append(REQUEST)
        return b"".join(chunks), uncounted

    def _should_request(self, session: Session) -> bool:
        """Ask for an ack in this write? After `request_after` stanzas; for an inactive client
        (XEP-0352) whenever anything is unacknowledged, since this write wakes it anyway."""
        state = session.sm
        if state is None or not state.counting or state.request_pending or not state.unacked:
            return False
        inactive = session.gate is not None
        if inactive or len(state.unacked) >= self.server.config.stream_management.request_after:
            state.request_pending = True
        return state.request_pending

    def _push_bytes(self, data: bytes) -> None:
        if self.outbox.put(data):  # a full outbox has its own remedy (the session is closed as too slow)
            self._write_soon()
