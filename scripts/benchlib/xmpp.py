"""A small Trio XMPP client for benchmarks: STARTTLS, SCRAM, bind, and a stream of top-level elements.

Independent of the appliance's code on purpose, so that it talks to Prosody and to the appliance
the same way. Every byte goes through a `wire.CountingStream` unless the client is made with
`wire=None` (load generators with thousands of connections do not need the record).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import ssl
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import trio
from lxml import etree

from benchlib.wire import CountingStream, Wire

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SM = "urn:xmpp:sm:3"
NS_CLIENT = "jabber:client"
NS_PING = "urn:xmpp:ping"
NS_ROSTER = "jabber:iq:roster"
# Best first; -PLUS needs channel binding, which this client does not bother with.
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")

Element = Any  # lxml's _Element


class XmppError(Exception):
    pass


@dataclass
class Endpoint:
    """Where a server listens and how to check its certificate."""
    host: str
    port: int
    domain: str
    cafile: Path


class StreamParser:
    """Feeds bytes to lxml; returns each top-level element (child of <stream:stream>) once complete."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.parser = etree.XMLPullParser(events=("start", "end"), resolve_entities=False,
                                          no_network=True, huge_tree=False)
        self.depth = 0
        self.root: Element | None = None
        self.ended = False  # the peer's </stream:stream> has been read

    def feed(self, data: bytes) -> list[Element]:
        self.parser.feed(data)
        done = []
        for event, element in self.parser.read_events():
            if event == "start":
                if self.depth == 0:
                    self.root = element
                self.depth += 1
                continue
            self.depth -= 1
            if self.depth == 1:
                done.append(element)
            elif self.depth == 0:
                self.ended = True
        if self.root is not None:
            for child in list(self.root):  # keep memory flat on long runs
                if child in done:
                    self.root.remove(child)
        return done


class Splitter:
    """Byte sizes of the top-level elements, exactly as they were on the stream (after TLS).

    A scan for tags that knows about quoted attribute values: enough for the XML servers write
    (no comments, CDATA or processing instructions inside a stream; RFC 6120 §11.1).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.depth = 0          # 1 inside <stream:stream>
        self.size = 0           # bytes of the top-level element in progress
        self.tag = bytearray()  # the tag being read, from '<'
        self.quote = 0          # the quote byte we are inside of, in a tag

    def feed(self, data: bytes) -> list[int]:
        sizes = []
        for byte in data:
            if self.depth >= 1:
                self.size += 1
            if self.tag:
                self.tag.append(byte)
                if self.quote:
                    self.quote = 0 if byte == self.quote else self.quote
                elif byte in b"'\"":
                    self.quote = byte
                elif byte == ord(">"):
                    self._tag_done(bytes(self.tag), sizes)
                    self.tag.clear()
            elif byte == ord("<"):
                self.tag.append(byte)
                if self.depth == 1:
                    self.size = 1  # whitespace keepalives between stanzas belong to none
        return sizes

    def _tag_done(self, tag: bytes, sizes: list[int]) -> None:
        if tag.startswith(b"<?"):
            return
        if tag.startswith(b"</"):
            self.depth -= 1
        elif not tag.endswith(b"/>"):
            self.depth += 1
            return
        if self.depth == 1:
            sizes.append(self.size)


@dataclass
class Client:
    endpoint: Endpoint
    wire: Wire | None = field(default_factory=Wire)   # None: no record of the transfers
    plain_received: int = 0       # bytes after TLS decryption
    plain_sent: int = 0
    mechanisms: tuple[str, ...] = MECHANISMS          # the first of these the server offers is used
    starttls: bool = True         # False: stay in plaintext (a server that allows it, for benchmarks)
    source: str | None = None     # local address to connect from (127.0.0.2...: more ephemeral ports)

    def __post_init__(self) -> None:
        self.parser = StreamParser()
        self.splitter = Splitter()
        self.pending: deque[Element] = deque()
        self.sizes: deque[int] = deque()
        self.trace: list[tuple[float, str, bytes]] | None = None   # (time, "<" or ">", plaintext) when set
        self.tcp: trio.SocketStream | None = None
        self.stream: trio.abc.Stream | None = None
        self.send_lock = trio.Lock()
        self.features: Element | None = None
        self.jid = ""
        self.close_sent = False

    # ---- transport ---------------------------------------------------------------------------

    async def send(self, xml: str | bytes) -> None:
        data = xml.encode() if isinstance(xml, str) else xml
        if self.stream is None:
            raise XmppError("not connected (the connection was closed)")
        async with self.send_lock:
            self.plain_sent += len(data)
            if self.trace is not None:
                self.trace.append((trio.current_time(), ">", data))
            await self.stream.send_all(data)

    async def receive(self) -> Element:
        """The next top-level element; raises XmppError when the stream ends."""
        return (await self.receive_sized())[0]

    async def receive_sized(self) -> tuple[Element, int]:
        """The next top-level element and its exact size in bytes on the stream."""
        assert self.stream is not None
        while not self.pending:
            if self.parser.ended:
                raise XmppError("stream closed by the server")
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                raise XmppError(f"connection lost: {exc}") from None
            if not data:
                raise XmppError("connection closed by the server")
            self.plain_received += len(data)
            if self.trace is not None:
                self.trace.append((trio.current_time(), "<", data))
            try:
                self.pending.extend(self.parser.feed(data))
            except etree.XMLSyntaxError as exc:
                raise XmppError(f"malformed XML from the server ({exc}) in {data[-400:]!r}") from None
            self.sizes.extend(self.splitter.feed(data))  # never behind lxml, which may wait for more bytes
        return self.pending.popleft(), self.sizes.popleft() if self.sizes else -1

    async def expect(self, *names: str) -> Element:
        element = await self.receive()
        if etree.QName(element).localname not in names:
            raise XmppError(f"expected {'/'.join(names)}, got {etree.tostring(element)[:300]!r}")
        return element

    async def send_close(self) -> None:
        """</stream:stream>, once."""
        if not self.close_sent:
            self.close_sent = True
            await self.send("</stream:stream>")

    async def aclose(self, wait_for_server: float = 0.0) -> None:
        """Send </stream:stream> and close the connection; with `wait_for_server`, first read (for up
        to that many seconds) until the server has closed its stream too (RFC 6120 §4.4: the side
        that started the close then closes the TCP connection)."""
        if self.stream is None:
            return
        with trio.move_on_after(2 + wait_for_server) as scope:
            scope.shield = True
            try:
                await self.send_close()
                with trio.move_on_after(wait_for_server):
                    while wait_for_server:
                        await self.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, ssl.SSLError,
                    XmppError):
                pass
            await self.stream.aclose()
        self.stream = None

    # ---- negotiation -------------------------------------------------------------------------

    async def open_stream(self) -> Element:
        self.parser.reset()
        self.splitter.reset()
        self.pending.clear()
        self.sizes.clear()
        await self.send(f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}' "
                        f"to='{self.endpoint.domain}' version='1.0'>")
        self.features = await self.expect("features")
        return self.features

    async def connect(self) -> None:
        """TCP, STARTTLS, TLS handshake (certificate checked against the endpoint's CA file);
        only the stream header when `starttls` is False."""
        self.tcp = await trio.open_tcp_stream(self.endpoint.host, self.endpoint.port, local_address=self.source)
        self.stream = CountingStream(self.tcp, self.wire) if self.wire is not None else self.tcp
        features = await self.open_stream()
        if not self.starttls:
            return
        if features.find(f"{{{NS_TLS}}}starttls") is None:
            raise XmppError("the server offers no STARTTLS")
        await self.send(f"<starttls xmlns='{NS_TLS}'/>")
        await self.expect("proceed")
        context = ssl.create_default_context(cafile=str(self.endpoint.cafile))
        tls = trio.SSLStream(self.stream, context, server_hostname=self.endpoint.domain)
        await tls.do_handshake()
        self.stream = tls
        await self.open_stream()

    async def login(self, username: str, password: str, resource: str) -> str:
        await self.authenticate(username, password)
        await self.open_stream()
        await self.send(f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{resource}</resource>"
                        "</bind></iq>")
        reply = await self.expect("iq")
        jid = reply.findtext(f".//{{{NS_BIND}}}jid")
        if not jid:
            raise XmppError(f"bind failed: {etree.tostring(reply)!r}")
        self.jid = jid
        return jid

    async def authenticate(self, username: str, password: str) -> None:
        assert self.features is not None
        offered = [m.text for m in self.features.iter(f"{{{NS_SASL}}}mechanism")]
        mechanism = next((m for m in self.mechanisms if m in offered), None)
        if mechanism is None:
            raise XmppError(f"none of {'/'.join(self.mechanisms)} offered ({offered})")
        scram = Scram(mechanism, username, password)
        first = _b64(scram.client_first())
        await self.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{first}</auth>")
        challenge = await self.expect("challenge", "failure")
        if etree.QName(challenge).localname == "failure":
            raise XmppError(f"{username}: authentication refused")
        final = scram.client_final(base64.b64decode(challenge.text or "").decode())
        await self.send(f"<response xmlns='{NS_SASL}'>{_b64(final)}</response>")
        outcome = await self.expect("success", "failure")
        if etree.QName(outcome).localname == "failure":
            raise XmppError(f"{username}: authentication failed")
        scram.check_server_final(base64.b64decode(outcome.text or "").decode())

    # ---- helpers -----------------------------------------------------------------------------

    def tcp_socket(self) -> trio.socket.SocketType | None:
        return self.tcp.socket if self.tcp is not None else None


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class Scram:
    """The client side of SCRAM without channel binding (RFC 5802), for ASCII passwords.

    The salted password is cached: a benchmark logs thousands of accounts in with one password and
    salt, and PBKDF2 in the load generator would otherwise cost more than the server's work.
    """

    HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}

    def __init__(self, mechanism: str, username: str, password: str) -> None:
        self.hash = self.HASHES[mechanism]
        self.password = password
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        name = username.replace("=", "=3D").replace(",", "=2C")
        self.first_bare = f"n={name},r={self.nonce}"
        self.server_signature = b""

    def client_first(self) -> str:
        return "n,," + self.first_bare

    def client_final(self, server_first: str) -> str:
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        if not fields.get("r", "").startswith(self.nonce) or "s" not in fields or "i" not in fields:
            raise XmppError(f"bad SCRAM challenge {server_first!r}")
        salted = salted_password(self.hash, self.password, base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = self._hmac(salted, b"Client Key")
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        signature = self._hmac(hashlib.new(self.hash, client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={_b64(proof)}"

    def check_server_final(self, server_final: str) -> None:
        if server_final != "v=" + _b64(self.server_signature):
            raise XmppError("the server's SCRAM signature is wrong")

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()


@functools.lru_cache(maxsize=64)
def salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    """PBKDF2 (RFC 5802's Hi); also what a server stores keys from (benchlib.accounts)."""
    return hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)


def local(element: Element) -> str:
    return etree.QName(element).localname


def namespace(element: Element) -> str:
    return etree.QName(element).namespace or ""


def attr(value: str) -> str:
    """An XML attribute value, quoted and escaped."""
    return quoteattr(value)


def kind(element: Element) -> str:
    """'message', 'presence', 'iq', 'sm:r', 'sm:a', ... for tallies."""
    ns = namespace(element)
    if ns == NS_CLIENT:
        return local(element)
    if ns == NS_SM:
        return "sm:" + local(element)
    return f"{{{ns}}}{local(element)}"


def iq_answer(element: Element) -> str | None:
    """The reply a well-behaved client owes to an IQ request (ping, roster push: result;
    anything else: service-unavailable); None for results and errors."""
    if element.get("type") not in ("get", "set"):
        return None
    to = f" to={attr(element.get('from'))}" if element.get("from") else ""
    iq_id = attr(element.get("id", ""))
    child = element[0] if len(element) else None
    if child is not None and namespace(child) in (NS_PING, NS_ROSTER):
        return f"<iq type='result' id={iq_id}{to}/>"
    return (f"<iq type='error' id={iq_id}{to}><error type='cancel'>"
            "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
