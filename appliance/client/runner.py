"""The client's life: log in, stay connected, and come back by itself (docs/client.md, "Staying
connected").

Start-up is a sequence of tasks, each of which can fail: connect (TCP, TLS, SASL), then resume
the XEP-0198 session or bind a new one (registration is pairing.py's job: without stored
credentials the runner says "needs pairing" and returns). Online, three activities run in one
nursery: the receiver (stanzas to `on_stanza`, chat messages also into the history), the sender
(the persisted outbox, outbox.py) and the heartbeat. When any of them raises LinkLost the nursery
ends, and the reconnect loop waits as backoff.py says and tries again, resuming when the server
still holds the session. `not-authorized` (the password changed or the account is gone) is
final: the stored password is cleared and the runner stops, since retrying could never succeed.
"""

from __future__ import annotations

import enum
import inspect
import random
import time
import uuid
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import trio
from lxml import etree

from appliance.client.backoff import Backoff
from appliance.client.outbox import Outbox
from appliance.client.state import ClientState
from appliance.client.stream import AuthRefused, ClientStream, LinkLost, connect
from appliance.proto import ns
from appliance.proto.stanza import Element, make, sub

# Below the idle timeouts after which mobile carriers' NATs drop a TCP connection (docs/client.md).
HEARTBEAT_INTERVAL = 120.0
# A GPRS round trip can take seconds when the radio has to wake up first.
HEARTBEAT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 30.0


class Status(enum.Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    WAITING = "waiting"              # StatusChange.delay: seconds until the next attempt
    NEEDS_PAIRING = "needs-pairing"  # no usable credentials: a new invite is needed
    STOPPED = "stopped"


@dataclass(frozen=True)
class StatusChange:
    status: Status
    delay: float | None = None  # WAITING only
    reason: str = ""            # what led here (the error of the last connection or attempt)
    resumed: bool = False       # ONLINE only: the previous session went on


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ClientRunner:
    def __init__(self, state: ClientState, *, on_stanza: Callable[[Element], Any] | None = None,
                 on_status: Callable[[StatusChange], Any] | None = None,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 heartbeat_timeout: float = HEARTBEAT_TIMEOUT, backoff: Backoff | None = None,
                 rng: random.Random | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 cafile: str | None = None) -> None:
        self.state = state
        self.on_stanza = on_stanza
        self.on_status = on_status
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.connect_timeout = connect_timeout
        self.cafile = cafile                   # trust anchor when the account pins no certificate
        self.outbox = Outbox(state.conn)
        self.status = Status.STOPPED
        self.change = StatusChange(Status.STOPPED)
        self.attempts: list[float] = []        # trio.current_time() of each connection attempt
        self.stream: ClientStream | None = None
        self._in_flight: dict[int, bytes] = {}  # outbox id -> its bytes, sent on this session
        self._wake = trio.Event()               # set when the outbox gets something new
        self.presence_children: list[Element] = []  # e.g. XEP-0115 caps (secure.py)

    def _set(self, status: Status, **details: Any) -> None:
        self.status = status
        self.change = StatusChange(status, **details)
        if self.on_status is not None:
            self.on_status(self.change)

    # ---- the reconnect loop -------------------------------------------------------------------

    async def run(self) -> Status:
        """Stay connected until cancelled, or until the account needs pairing (returned)."""
        account = self.state.load_account()
        if account is None:
            self._set(Status.NEEDS_PAIRING, reason="no stored credentials")
            return self.status
        sm = self.state.load_sm()
        try:
            while True:
                self.attempts.append(trio.current_time())
                self._set(Status.CONNECTING)
                try:
                    stream = await connect(account, resume=sm, timeout=self.connect_timeout,
                                           cafile=self.cafile)
                except AuthRefused as exc:
                    if exc.condition == "not-authorized":
                        self.state.clear_credentials()
                        self._set(Status.NEEDS_PAIRING, reason=_reason(exc))
                        return self.status
                    reason = _reason(exc)  # e.g. temporary-auth-failure: worth another try
                except (LinkLost, OSError, trio.TooSlowError) as exc:
                    reason = _reason(exc)
                else:
                    reason = await self._online(stream, had_session=sm is not None)
                    sm = stream.sm if stream.sm.id else None
                delay = self.backoff.next_delay(self.rng)
                self._set(Status.WAITING, delay=delay, reason=reason)
                await trio.sleep(delay)
        finally:
            if self.status != Status.NEEDS_PAIRING:
                self._set(Status.STOPPED)

    async def _online(self, stream: ClientStream, *, had_session: bool) -> str:
        """Run the three activities until the link is lost; returns why it was."""
        self.stream = stream
        self.backoff.connected(trio.current_time())
        self._take_over(stream, had_session)
        self._set(Status.ONLINE, resumed=stream.resumed)
        reason = "the connection ended"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receiver, stream)
                nursery.start_soon(self._sender, stream)
                nursery.start_soon(self._heartbeat, stream)
                if not stream.resumed:  # available: offline messages come now
                    await stream.send(self.available_presence())
        except* LinkLost as group:
            reason = _reason(group.exceptions[0])
        finally:
            self.stream = None
            if stream.counting:   # acknowledgements that came in since the last check
                self._settle(stream)
            self.state.save_sm(stream.sm if stream.sm.id else None)  # a restarted client resumes
            with trio.CancelScope(shield=True):
                await stream.abort()  # not </stream>: the server keeps the session to resume
        self.backoff.reset_if_stable(trio.current_time())
        return reason

    def available_presence(self) -> Element:
        presence = make("presence")
        presence.extend(deepcopy(child) for child in self.presence_children)
        return presence

    # ---- the three activities -------------------------------------------------------------------

    async def _receiver(self, stream: ClientStream) -> None:
        while True:
            stanza = await stream.receive()
            body = stanza.findtext(f"{{{ns.CLIENT}}}body")
            if etree.QName(stanza).localname == "message" and body is not None:
                peer = stanza.get("from", stream.domain).partition("/")[0]
                if self._seen(peer, stanza.get("id")):
                    continue
                self.state.add_message(peer, "in", body, time.time(), stanza.get("id"))
            if self.on_stanza is not None:
                result = self.on_stanza(stanza)
                if inspect.isawaitable(result):
                    await result

    def _seen(self, peer: str, stanza_id: str | None) -> bool:
        """Whether this message came before: a sender whose session could not be resumed sends
        again what the server never acknowledged, which may have arrived (at least once delivery)."""
        return stanza_id is not None and self.state.conn.execute(
            "SELECT 1 FROM messages WHERE peer = ? AND direction = 'in' AND stanza_id = ?",
            (peer, stanza_id)).fetchone() is not None

    async def _sender(self, stream: ClientStream) -> None:
        while True:
            wake = self._wake
            sent = False
            for item in self.outbox.pending():
                if item.id not in self._in_flight:
                    await stream.send(item.element())
                    self._in_flight[item.id] = item.wire()
                    sent = True
            if sent:  # ask for the acknowledgement now rather than at the next heartbeat
                await stream.heartbeat(self.heartbeat_timeout)
                self._settle(stream)
            await wake.wait()

    async def _heartbeat(self, stream: ClientStream) -> None:
        """A sign of life every heartbeat_interval; none within heartbeat_timeout: LinkLost."""
        while True:
            await trio.sleep(self.heartbeat_interval)
            await stream.heartbeat(self.heartbeat_timeout)
            self._settle(stream)

    # ---- the outbox and XEP-0198 -----------------------------------------------------------------

    def _take_over(self, stream: ClientStream, had_session: bool) -> None:
        """What the server got of the previous session: on resuming (or failing to) it says how
        much with h. Resumed, the stream has sent the rest again, which stays in flight; after a
        new login nothing is, and the sender sends what is left of the outbox again."""
        unacked = set(stream.sm.outbound_unacked if stream.resumed else stream.lost)
        if had_session:
            self.outbox.remove([i for i, wire in self._in_flight.items() if wire not in unacked])
        pending = self.outbox.pending() if stream.resumed else []
        self._in_flight = {item.id: item.wire() for item in pending if item.wire() in unacked}

    def _settle(self, stream: ClientStream) -> None:
        """Drop from the outbox what the server has acknowledged (or, without stream management,
        what went out before the ping that just came back: the stream is ordered)."""
        unacked = set(stream.sm.outbound_unacked) if stream.counting else set()
        done = [i for i, wire in self._in_flight.items() if wire not in unacked]
        self.outbox.remove(done)
        for i in done:
            del self._in_flight[i]

    # ---- for the application ------------------------------------------------------------------------

    async def send_message(self, to: str, body: str, extra_children: Iterable[Element] = ()) -> str:
        """Queue a chat message (kept on disk until the server acknowledges it); returns its id."""
        message_id = uuid.uuid4().hex
        message = make("message", to=to, type_="chat", id_=message_id)
        sub(message, f"{{{ns.CLIENT}}}body", body)
        for child in extra_children:
            message.append(deepcopy(child))
        self.outbox.put(message)
        self.state.add_message(to.partition("/")[0], "out", body, time.time(), message_id)
        self._wake.set()
        self._wake = trio.Event()
        return message_id

