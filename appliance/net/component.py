"""XEP-0114 external components: app servers (XEP-0357 push) and gateways on their own subdomain.

A component connects over plain TCP (the listener is on loopback by default: `[components] listen`),
opens a `jabber:component:accept` stream to its domain, and proves the shared secret with
`<handshake>` = hex SHA-1 of the stream id followed by the secret. It is then the one connection
for its domain (a second gets `conflict`): stanzas addressed to the domain or its JIDs are written
to it (core/server.py `components`), and its own stanzas are routed like any other, provided their
'from' is in its domain (`invalid-from` otherwise). The parser and its limits are the c2s ones.

Inside the appliance every stanza is `jabber:client`; the component stream's default namespace is
`jabber:component:accept`, so each stanza's default namespace is swapped on the way in and out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import trio
from lxml import etree

from appliance.config import component_secrets
from appliance.core.server import Server
from appliance.net.listeners import open_listeners
from appliance.proto import ns
from appliance.proto.errors import StreamError
from appliance.proto.jid import JID, InvalidJID
from appliance.proto.stanza import STREAM_CLOSE, Element, kind_of, serialize
from appliance.proto.xmlstream import StanzaReceived, StreamEnded, StreamOpened, StreamParser

log = logging.getLogger("appliance.component")

ACCEPT = "jabber:component:accept"
_HANDSHAKE = f"{{{ACCEPT}}}handshake"
_SAFE = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def handshake_digest(stream_id: str, secret: str) -> str:
    return hashlib.sha1((stream_id + secret).encode()).hexdigest()


def swap_default_ns(data: bytes, old: str, new: str) -> bytes:
    """The stanza's own xmlns (lxml writes it first) from `old` to `new`; children that inherit it follow."""
    head = f' xmlns="{old}"'.encode()
    at = data.find(head)
    end = data.find(b">")
    if at < 0 or at > end:
        return data
    return data[:at] + f' xmlns="{new}"'.encode() + data[at + len(head):]


class ComponentService:
    def __init__(self, server: Server, secrets_by_domain: dict[str, str]) -> None:
        self.server = server
        self.secrets = secrets_by_domain
        self.links: dict[str, ComponentLink] = {}  # the connected one per component domain
        for domain in secrets_by_domain:
            server.components[domain] = None  # configured, not connected: stanzas to it bounce

    async def listen(self, *, task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.server.config.components
        listeners = await open_listeners(config.listen, config.port, "components")
        ports = [listener.socket.getsockname()[1] for listener in listeners]
        log.info("components (%s) may connect on port %d", ", ".join(sorted(self.secrets)), ports[0])
        task_status.started(ports)
        await trio.serve_listeners(self._accept, listeners)

    async def _accept(self, stream: trio.SocketStream) -> None:
        link = ComponentLink(self, stream)
        try:
            await link.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("component %s: connection lost (%s)", link.domain or "?", exc)
        except Exception:  # a bug in one connection must cost that connection, never the server
            log.exception("component %s: internal error; connection closed", link.domain or "?")
        finally:
            link.detach()
            await trio.aclose_forcefully(stream)


class ComponentLink:
    """One component connection: handshake, then a reader routing its stanzas and a writer."""

    def __init__(self, service: ComponentService, stream: trio.SocketStream) -> None:
        self.service = service
        self.server = service.server
        self.stream = stream
        limits = self.server.config.limits
        self.parser = StreamParser(max_stanza_bytes=limits.max_stanza_bytes, max_depth=limits.max_depth,
                                   default_ns=ACCEPT)
        self.domain: str | None = None
        self.attached = False
        self.outbox_in, self.outbox = trio.open_memory_channel[Element](limits.outbox_stanzas)
        self.events: list = []
        self.scope = trio.CancelScope()
        self.sending = trio.Lock()  # the writer task and the reader's closing words share the socket

    async def run(self) -> None:
        error: StreamError | None = None
        try:
            with trio.fail_after(self.server.config.limits.handshake_timeout):
                await self._handshake()
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    error = await self._serve()
                    nursery.cancel_scope.cancel()
            if self.scope.cancelled_caught:
                error = StreamError("conflict", "replaced by a new connection of this component")
        except StreamError as exc:
            error = exc
        except trio.TooSlowError:
            error = StreamError("connection-timeout", "no handshake in time")
        # Detached before the closing words: a stanza routed to this domain while they are written
        # would wait in an outbox nobody writes any more, lost instead of bounced.
        self.detach()
        if error is not None:
            log.info("component %s: stream error %s %s", self.domain or "?", error.condition, error.text)
            await self._send(error.to_xml() + STREAM_CLOSE)

    async def _serve(self) -> StreamError | None:
        """Read and route until the component leaves (None) or breaks a rule (the stream error)."""
        try:
            await self._read_loop()
        except StreamError as error:
            return error
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("component %s: connection lost (%s)", self.domain, exc)
            await self._send(STREAM_CLOSE)  # a component that closed its stream gets ours (best effort)
        return None

    async def _handshake(self) -> None:
        opened = await self._next(StreamOpened)
        domain = opened.attrs.get("to", "").lower()
        stream_id = secrets.token_hex(12)
        await self._send(
            f"<?xml version='1.0'?><stream:stream xmlns='{ACCEPT}' xmlns:stream='{ns.STREAM}'"
            f" from='{domain if domain in self.service.secrets else self.server.domain}' id='{stream_id}'>".encode())
        if domain not in self.service.secrets:
            raise StreamError("host-unknown", f"no component is configured for {domain!r}")
        proof = await self._next(StanzaReceived)
        if proof.element.tag != _HANDSHAKE:
            raise StreamError("not-authorized", "send <handshake/> first")
        expected = handshake_digest(stream_id, self.service.secrets[domain])
        if not hmac.compare_digest((proof.element.text or "").strip().lower().encode(), expected.encode()):
            raise StreamError("not-authorized", "wrong handshake for this component's secret")
        # The secret proves it is the component: a new connection replaces the old one, whose TCP
        # link may be dead without anyone knowing yet (an app server restarted after a crash).
        if (older := self.service.links.get(domain)) is not None:
            log.info("component %s connected again; closing its older connection", domain)
            older.replaced()
        self.domain, self.attached = domain, True
        self.service.links[domain] = self
        self.server.components[domain] = self._push
        await self._send(f"<handshake xmlns='{ACCEPT}'/>".encode())
        log.info("component %s connected from %s", domain, self.stream.socket.getpeername()[0])

    async def _next(self, wanted: type) -> StreamOpened | StanzaReceived:
        while True:
            while self.events:
                event = self.events.pop(0)
                if isinstance(event, wanted):
                    return event
                if isinstance(event, StreamEnded):
                    raise trio.BrokenResourceError("stream closed by the component")
            data = await self.stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("connection closed by the component")
            self.events = self.parser.feed(data)

    async def _read_loop(self) -> None:
        idle = self.server.config.limits.idle_timeout
        while True:
            with trio.move_on_after(idle) as waited:
                received = await self._next(StanzaReceived)
            if waited.cancelled_caught:
                raise StreamError("connection-timeout", f"nothing received for {idle:.0f} s")
            await self._route(received.element)

    async def _route(self, el: Element) -> None:
        stanza = etree.fromstring(swap_default_ns(serialize(el), ACCEPT, ns.CLIENT), _SAFE)
        if kind_of(stanza) is None:
            raise StreamError("unsupported-stanza-type", f"{etree.QName(el).localname} is no stanza")
        try:
            sender = JID.parse(stanza.get("from") or "")
        except InvalidJID as exc:
            raise StreamError("improper-addressing", f"every stanza needs a valid 'from': {exc}") from None
        if sender.domain != self.domain:
            raise StreamError("invalid-from", f"'from' must be in {self.domain}")
        if not stanza.get("to"):  # no 'to' would mean "on behalf of the sender's account": it has none
            raise StreamError("improper-addressing", "every stanza from a component needs a 'to'")
        await self.server.route(stanza)

    def _push(self, stanza: Element) -> bool:
        try:
            self.outbox_in.send_nowait(stanza)
            return True
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False

    async def _write_loop(self) -> None:
        async for stanza in self.outbox:
            await self._send(swap_default_ns(serialize(stanza), ns.CLIENT, ACCEPT))

    async def _send(self, data: bytes) -> None:
        with trio.move_on_after(5):
            try:
                async with self.sending:
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def replaced(self) -> None:
        """A newer connection of the same component took over: end this one with `conflict`."""
        self.detach()
        self.scope.cancel()

    def detach(self) -> None:
        """Stanzas to this domain bounce again; what was queued and not written is lost with it
        (a component is a trusted local service; it answers what it gets, or the sender retries)."""
        if self.attached and self.domain is not None:
            self.server.components[self.domain] = None
            if self.service.links.get(self.domain) is self:
                del self.service.links[self.domain]
            self.attached = False
            log.info("component %s disconnected", self.domain)
        self.outbox_in.close()


def service_for(server: Server) -> ComponentService | None:
    """The service when `[components] secrets` names at least one component and a port is set."""
    config = server.config.components
    if not config.secrets or not config.port:
        return None
    return ComponentService(server, component_secrets(config.secrets, server.domain))


__all__ = ["ACCEPT", "ComponentService", "handshake_digest", "service_for"]
