"""A raw XMPP client over a blocking socket: for hostile input and cases a client library hides.

Usage: `c = RawClient(server).open()` (STARTTLS done), `c.login("alice")`, `c.send(b"...")`,
`c.read_until(b"</message>")`, `c.read_to_close()`. Step by step: `c.authenticate(...)` returns the
`<success>` or `<failure>` element (SCRAM with optional channel binding, or PLAIN), `c.bind(...)`.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import time

from scramp import ScramClient

from tests.harness import PASSWORD, ServerProcess

NS_STREAM = "http://etherx.jabber.org/streams"


class StreamClosed(Exception):
    pass


class RawClient:
    def __init__(self, server: ServerProcess, *, direct_tls: bool = False, timeout: float = 10.0,
                 source: str | None = None, host: str | None = None) -> None:
        self.server = server
        self.host = host or server.host  # the server's address (127.0.0.1 unless it listens elsewhere)
        self.direct_tls = direct_tls
        self.timeout = timeout
        self.source = source  # e.g. "127.0.0.2": another client address on loopback (Linux)
        self.sock: socket.socket | ssl.SSLSocket | None = None
        self.buffer = b""

    # ---- transport --------------------------------------------------------------------------

    def connect(self) -> RawClient:
        port = self.server.tls_port if self.direct_tls else self.server.port
        self.sock = socket.create_connection((self.host, port), timeout=self.timeout,
                                             source_address=(self.source, 0) if self.source else None)
        if self.direct_tls:
            self._wrap()
        return self

    def _wrap(self) -> None:
        context = ssl.create_default_context(cafile=str(self.server.cert))
        assert self.sock is not None
        self.sock = context.wrap_socket(self.sock, server_hostname=self.server.domain)

    def send(self, data: bytes | str) -> None:
        assert self.sock is not None
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def read_until(self, *markers: bytes, timeout: float | None = None) -> bytes:
        """Everything up to and including the first of `markers` to arrive; the rest stays buffered."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not (found := [self.buffer.index(m) + len(m) for m in markers if m in self.buffer]):
            self._receive(deadline)
        at = min(found)
        data, self.buffer = self.buffer[:at], self.buffer[at:]
        return data

    def read_to_close(self, timeout: float | None = None) -> bytes:
        """Everything until the server closes the connection (or a closing </stream:stream>)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while not self.buffer.rstrip().endswith(b"</stream:stream>"):
                self._receive(deadline)
        except StreamClosed:
            pass
        data, self.buffer = self.buffer, b""
        return data

    def _receive(self, deadline: float) -> None:
        assert self.sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"nothing more after {self.buffer[-300:]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError) as exc:
            raise StreamClosed(str(exc)) from None
        except socket.timeout:
            raise TimeoutError(f"nothing more after {self.buffer[-300:]!r}") from None
        if not chunk:
            raise StreamClosed("connection closed")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    # ---- XMPP steps ----------------------------------------------------------------------------

    def header(self, to: str | None = None) -> bytes:
        self.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}' "
                  f"to='{to or self.server.domain}' version='1.0'>")
        return self.read_until(b"</stream:features>")

    def open(self) -> RawClient:
        """Connect and get through TLS (STARTTLS or direct); returns after the post-TLS features."""
        self.connect()
        if not self.direct_tls:
            self.header()
            self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            self.read_until(b"/>")
            self._wrap()
        self.features = self.header()
        return self

    def login(self, username: str, password: str = PASSWORD, resource: str | None = "raw",
              mechanism: str = "SCRAM-SHA-256") -> str:
        """SCRAM (or PLAIN) login and bind; returns the bound full JID."""
        outcome = self.authenticate(username, password, mechanism)
        if b"<success" not in outcome:
            raise PermissionError(outcome.decode(errors="replace"))
        return self.bind(resource)

    def authenticate(self, username: str, password: str = PASSWORD, mechanism: str = "SCRAM-SHA-256",
                     channel_binding: tuple[str, bytes] | None = None) -> bytes:
        """One SASL exchange; returns the server's `<success>` or `<failure>` element as bytes.

        SCRAM mechanisms go through scramp's client; -PLUS ones need `channel_binding`, e.g.
        `("tls-server-end-point", c.server_end_point())`. A server may refuse at `<auth>` already.
        """
        if mechanism == "PLAIN":
            data = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{data}</auth>")
            return self.read_until(b"</success>", b"</failure>")
        client = ScramClient([mechanism], username, password, channel_binding=channel_binding)
        first = base64.b64encode(client.get_client_first().encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{first}</auth>")
        challenge = self.read_until(b"</challenge>", b"</failure>")
        if b"<failure" in challenge:
            return challenge
        client.set_server_first(base64.b64decode(element_text(challenge)).decode())
        final = base64.b64encode(client.get_client_final().encode()).decode()
        self.send(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{final}</response>")
        outcome = self.read_until(b"</success>", b"</failure>")
        if b"<success" in outcome:
            client.set_server_final(base64.b64decode(element_text(outcome)).decode())  # the server knew the keys
        return outcome

    def bind(self, resource: str | None = "raw") -> str:
        """Restart the stream after SASL success and bind `resource` (None: the server picks one)."""
        self.header()
        bind = f"<resource>{resource}</resource>" if resource else ""
        self.send(f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{bind}</bind></iq>")
        reply = self.read_until(b"</iq>")
        if b"<jid>" not in reply:
            raise PermissionError(reply.decode(errors="replace"))
        return reply.split(b"<jid>", 1)[1].split(b"</jid>", 1)[0].decode()

    def server_end_point(self) -> bytes:
        """tls-server-end-point channel-binding data (RFC 5929 §4.1): SHA-256 of the server's
        certificate (DER), as for every certificate signed with SHA-256 or weaker."""
        assert isinstance(self.sock, ssl.SSLSocket), "no TLS yet"
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).digest()

    def presence(self) -> None:
        self.send("<presence/>")


def element_text(element: bytes) -> bytes:
    """The character data of a simple element such as `<challenge xmlns='...'>BASE64</challenge>`."""
    return element.split(b">", 1)[1].split(b"<", 1)[0]
