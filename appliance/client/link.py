"""One client connection's transport: TCP, STARTTLS with a pinned or verified certificate, and the
server's side of the stream parsed with proto/xmlstream.py. What is said on it lives in
negotiation.py (log in) and stream.py (stanzas)."""

from __future__ import annotations

import hashlib
import ssl
from collections import deque
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

import trio
from lxml import etree

from appliance.proto import ns
from appliance.proto.errors import StreamError
from appliance.proto.stanza import Element
from appliance.proto.xmlstream import StanzaReceived, StreamEnded, StreamParser

_READ_BYTES = 65536
_STREAM_ERROR = f"{{{ns.STREAM}}}error"
# What a broken or closed connection raises from trio, the socket or OpenSSL.
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(frozen=True)
class Account:
    """What the client stores to log in again."""
    jid: str                 # bare JID, e.g. "anna@chat.local"
    password: str
    host: str                # where to connect (the server's address; may differ from the domain)
    port: int                # c2s port (STARTTLS)
    fingerprint: str | None  # lowercase hex SHA-256 of the server certificate to pin; None: verify normally
    resource: str = "appliance-client"

    @property
    def domain(self) -> str:
        return self.jid.rpartition("@")[2]

    @property
    def username(self) -> str:
        return self.jid.rpartition("@")[0]


class AuthRefused(Exception):
    """The server refused the credentials (SASL <failure/>); `condition` e.g. "not-authorized"."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


class LinkLost(Exception):
    """The connection ended: socket error, EOF, stream error, or a heartbeat nobody answered."""


class PinMismatch(LinkLost):
    """The server's certificate is not the one pinned; nothing was sent over that TLS session."""


class StanzaRefused(Exception):
    """An IQ answered with type='error'."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


def error_of(stanza: Element) -> tuple[str, str]:
    """(condition, text) of a stanza's or a stream's <error/>, or of a SASL <failure/>."""
    error = stanza.find(f"{{{ns.CLIENT}}}error")
    holder = error if error is not None else stanza
    condition, text = "undefined-condition", ""
    for child in holder:
        name = etree.QName(child).localname
        if name == "text":
            text = child.text or ""
        elif isinstance(child.tag, str):
            condition = name
    return condition, text


def tls_context(fingerprint: str | None, cafile: str | None) -> ssl.SSLContext:
    """With a pin, chain and name are not checked (the pin is stronger: it names one certificate);
    without, the system's trust store (or `cafile`) and the domain name are."""
    context = ssl.create_default_context(cafile=cafile)
    if fingerprint:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Link:
    """A TCP connection, later wrapped in TLS, and the parser for the stream the server sends."""

    def __init__(self, tcp: trio.abc.Stream, domain: str) -> None:
        self.transport: trio.abc.Stream = tcp
        self.domain = domain
        self.send_lock = trio.Lock()
        self._parser = StreamParser()
        self._events: deque[object] = deque()

    @classmethod
    async def open(cls, host: str, port: int, domain: str) -> Link:
        return cls(await trio.open_tcp_stream(host, port), domain)

    async def start_stream(self, from_jid: str | None = None) -> Element:
        """Send a stream header, and return the server's <stream:features/>."""
        self._parser, self._events = StreamParser(), deque()
        from_attr = f" from={quoteattr(from_jid)}" if from_jid else ""
        await self.send(
            f"<?xml version='1.0'?><stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAM}'"
            f" to={quoteattr(self.domain)}{from_attr} version='1.0' xml:lang='en'>".encode())
        features = await self.next_element()
        if features.tag != f"{{{ns.STREAM}}}features":
            raise LinkLost(f"expected stream features, got {etree.QName(features).localname}")
        return features

    async def start_tls(self, fingerprint: str | None, cafile: str | None) -> None:
        """Wrap the TCP connection in TLS (after <proceed/>) and check the pin before anything else."""
        tcp = self.transport
        tls = trio.SSLStream(tcp, tls_context(fingerprint, cafile), server_hostname=self.domain)
        try:
            await tls.do_handshake()
        except (*_BROKEN, ssl.SSLError) as exc:
            await trio.aclose_forcefully(tcp)
            raise LinkLost(f"TLS handshake with {self.domain} failed: {exc}") from exc
        if fingerprint:
            der = tls.getpeercert(binary_form=True)
            seen = hashlib.sha256(der).hexdigest()
            if seen != fingerprint.replace(":", "").lower():
                await trio.aclose_forcefully(tcp)  # not even a TLS close_notify goes to an impostor
                raise PinMismatch(f"the server's certificate (SHA-256 {seen}) is not the pinned {fingerprint}")
        self.transport = tls

    async def send(self, data: bytes) -> None:
        async with self.send_lock:
            await self.send_unlocked(data)

    async def send_unlocked(self, data: bytes) -> None:
        """For callers that hold send_lock already (to keep a queue in the order of the wire)."""
        try:
            await self.transport.send_all(data)
        except (*_BROKEN, ssl.SSLError) as exc:
            raise LinkLost(f"sending failed: {exc}") from exc

    async def next_element(self) -> Element:
        """The next top-level element the server sends; LinkLost at the stream's end or error."""
        while True:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, StreamEnded):
                    raise LinkLost("the server closed the stream")
                if isinstance(event, StanzaReceived):
                    if event.element.tag == _STREAM_ERROR:
                        condition, text = error_of(event.element)
                        raise LinkLost(f"stream error from the server: {condition} {text}".rstrip())
                    return event.element
            await self._read()

    async def _read(self) -> None:
        try:
            data = await self.transport.receive_some(_READ_BYTES)
        except (*_BROKEN, ssl.SSLError) as exc:
            raise LinkLost(f"connection broken: {exc}") from exc
        if not data:
            raise LinkLost("the server closed the connection")
        try:
            self._events.extend(self._parser.feed(bytes(data)))
        except StreamError as exc:
            raise LinkLost(f"the server sent bad XML: {exc}") from exc

    async def abort(self) -> None:
        """Close the connection without ending the stream."""
        await trio.aclose_forcefully(self.transport)
