"""One XMPP client connection on Trio: `connect()` logs in (negotiation.py) and returns a
ClientStream that sends and receives stanzas, counts them for XEP-0198, answers the server's
<r/> and XEP-0199 pings, and checks the link on demand (`heartbeat`).

There is no background task: whichever call needs the next element from the server (receive,
iq, heartbeat) reads it, and hands out what it read to the others. So `receive()` in one task and
`iq()` in another work together, and someone must be calling `receive()` for the stream to answer
the server's pings and ack requests (the runner's receiver does).
"""

from __future__ import annotations

import itertools
from collections import deque

import trio
from lxml import etree

from appliance.client.link import (Account, AuthRefused, Link, LinkLost, PinMismatch, StanzaRefused,
                                   error_of)
from appliance.client.negotiation import SmState, authenticate, establish, starttls
from appliance.proto import ns
from appliance.proto.sm import MOD, REQUEST
from appliance.proto.stanza import STREAM_CLOSE, Element, iq_result, make, sub, to_stream

__all__ = ["Account", "AuthRefused", "ClientStream", "LinkLost", "PinMismatch", "SmState",
           "StanzaRefused", "connect"]

_STANZAS = frozenset(f"{{{ns.CLIENT}}}{kind}" for kind in ("message", "presence", "iq"))
_CLOSE_GRACE = 2.0  # seconds to write </stream:stream> before the socket is closed anyway
_REPLY_LIMIT = 30.0  # seconds an answer to the server may take to write, whatever is cancelled


async def connect(account: Account, *, resume: SmState | None = None, timeout: float = 30,
                  cafile: str | None = None) -> ClientStream:
    """TCP, STARTTLS (pinned to account.fingerprint, or verified against the system's trust
    store or `cafile`), SASL SCRAM, then XEP-0198 resumption of `resume` if the server still has
    it, else a new session. Raises AuthRefused, LinkLost (PinMismatch; also when `timeout` passes),
    OSError. `resume` is left as it was: when `resumed` is False, `lost` holds what the server
    never got."""
    try:
        with trio.fail_after(timeout):
            link = await Link.open(account.host, account.port, account.domain)
            try:
                features = await starttls(link, account, cafile)
                features = await authenticate(link, account, features)
                session = await establish(link, account, features, resume)
            except BaseException:
                await link.abort()
                raise
    except trio.TooSlowError:
        raise LinkLost(f"logging in to {account.host}:{account.port} took more than {timeout:g} s") from None
    stream = ClientStream(link, session.jid, session.sm, resumed=session.resumed, lost=session.lost)
    stream.queue.extend(session.early)
    return stream


class ClientStream:
    def __init__(self, link: Link, jid: str, sm: SmState | None, *, resumed: bool,
                 lost: list[bytes]) -> None:
        self.jid = jid                 # the full JID bound (or resumed)
        self.resumed = resumed         # True: the old session goes on, nothing to send again
        self.lost = lost               # not resumed: the old session's unacknowledged stanzas
        self.counting = sm is not None
        self.sm = sm or SmState(None)  # for the next connect()
        self.queue: deque[Element] = deque()
        self._link = link
        self._answers: dict[str, Element | None] = {}  # IQ ids awaited by iq() -> their answer
        self._ids = itertools.count(1)
        self._reading = False
        self._changed = trio.Event()   # set (and replaced) whenever a read ends
        self._heard = 0                # <a/> and pings received: what heartbeat() waits for
        self._error: LinkLost | None = None

    @property
    def domain(self) -> str:
        return self._link.domain

    # ---- sending ------------------------------------------------------------------------------

    async def send(self, stanza: Element) -> None:
        """Write a stanza; with stream management it stays in sm.outbound_unacked until acked."""
        if self._error is not None:
            raise self._error
        data = to_stream(stanza)
        async with self._link.send_lock:  # queue order is wire order
            if self.counting:
                self.sm.outbound_unacked.append(data)  # kept even if the write fails: resent on resumption
            try:
                await self._link.send_unlocked(data)
            except LinkLost as exc:
                self._error = self._error or exc
                raise

    async def iq(self, request: Element, timeout: float = 30) -> Element:
        """Send an IQ get/set and return its result; StanzaRefused on type='error',
        trio.TooSlowError when no answer comes within `timeout`."""
        if request.get("id") is None:
            request.set("id", f"c{next(self._ids)}")
        key = request.get("id", "")
        self._answers[key] = None
        try:
            await self.send(request)
            with trio.fail_after(timeout):
                while (answer := self._answers[key]) is None:
                    await self._pump()
        finally:
            self._answers.pop(key, None)
        if answer.get("type") == "error":
            raise StanzaRefused(*error_of(answer))
        return answer

    # ---- receiving ----------------------------------------------------------------------------

    async def receive(self) -> Element:
        """The next message, presence or IQ get/set from the server; raises LinkLost."""
        while not self.queue:
            await self._pump()
        return self.queue.popleft()

    async def _pump(self) -> None:
        """Read and handle one element, or wait for the task that is reading to do so."""
        if self._error is not None:
            raise self._error
        if self._reading:
            await self._changed.wait()
            return
        self._reading = True
        try:
            await self._handle(await self._link.next_element())
        except LinkLost as exc:
            self._error = self._error or exc  # after abort(): the reason for it, not the closed fd
            raise self._error
        finally:
            self._reading = False
            self._changed.set()
            self._changed = trio.Event()

    async def _handle(self, element: Element) -> None:
        if element.tag.startswith(f"{{{ns.SM}}}"):
            return await self._sm_element(element)
        if element.tag not in _STANZAS:
            return  # nothing else is expected on a bound stream
        if self.counting:
            self.sm.inbound = (self.sm.inbound + 1) % MOD
        key = element.get("id")
        is_answer = element.get("type") in ("result", "error")
        if element.tag == f"{{{ns.CLIENT}}}iq" and is_answer and key in self._answers:
            self._answers[key] = element
        elif element.tag == f"{{{ns.CLIENT}}}iq" and element.find(f"{{{ns.PING}}}ping") is not None:
            self._heard += 1
            await self._reply(to_stream(iq_result(element)))
        else:
            self.queue.append(element)

    async def _sm_element(self, element: Element) -> None:
        name = etree.QName(element).localname
        if name == "r" and self.counting:
            await self._reply(f"<a xmlns='{ns.SM}' h='{self.sm.inbound}'/>".encode())
        elif name == "a" and self.counting:
            h = element.get("h", "")
            if h.isdigit():
                self.sm.acknowledge(int(h))
            self._heard += 1

    async def _reply(self, data: bytes) -> None:
        """Answers to the server (<a/>, pongs) are written whole even when the task reading for
        everyone is cancelled meanwhile (an iq() timing out): a TLS write cut short breaks the
        connection for every task. A link too slow to take a few bytes in time is lost anyway."""
        with trio.CancelScope(shield=True), trio.move_on_after(_REPLY_LIMIT):
            await self._link.send(data)

    # ---- liveness and closing -------------------------------------------------------------------

    async def heartbeat(self, timeout: float) -> None:
        """Ask the server for a sign of life (<r/>, or a XEP-0199 ping without stream management);
        LinkLost, and the connection closed, when none comes within `timeout`."""
        heard = self._heard
        with trio.move_on_after(timeout):
            if self.counting:
                await self._link.send(REQUEST)
                while self._heard == heard:
                    await self._pump()
            else:
                ping = make("iq", to=self.domain, type_="get")
                sub(ping, f"{{{ns.PING}}}ping")
                await self.iq(ping, timeout + 1)  # the outer deadline comes first
            return
        self._error = LinkLost(f"no answer from the server in {timeout:g} s")
        await self.abort()  # a reader woken by the close raises this _error too
        raise self._error

    async def abort(self) -> None:
        """Close the connection without ending the stream: the server keeps the session for
        resumption (a lost link, as a phone sees it)."""
        self._error = self._error or LinkLost("the connection was closed")
        await self._link.abort()

    async def aclose(self) -> None:
        """A last <a/> (what we got is confirmed: the server must not route it again, XEP-0198
        §4), </stream:stream>, the server's own closing tag (so it has read all that: a close with
        unread data in our socket resets the connection, and the server may lose the last bytes),
        then close: the server ends the session (no resumption)."""
        if self._error is None:
            with trio.move_on_after(_CLOSE_GRACE):
                try:
                    if self.counting:
                        await self._link.send(f"<a xmlns='{ns.SM}' h='{self.sm.inbound}'/>".encode())
                    await self._link.send(STREAM_CLOSE)
                    while not self._reading:  # a reading task would see the end itself
                        await self._link.next_element()
                except LinkLost:
                    pass  # the server's end of the stream, or closing anyway
        self._error = self._error or LinkLost("the stream was closed")
        await self._link.abort()
