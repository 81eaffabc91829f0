"""The client-to-server stream as a sans-I/O state machine (RFC 6120 §4-§7).

Bytes go in with `receive_data`, events come out, bytes to write come from `data_to_send`.
TLS, session binding and stanza handling belong to the caller; this object only says when they
are due (`StartTLS`, `BindRequested`, `StanzaIn`) and is told the outcome.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Callable

from lxml import etree

from appliance.proto import ns, sasl
from appliance.proto.errors import StanzaError, StreamError
from appliance.proto.stanza import STREAM_CLOSE, Element, error_reply, iq_result, stream_header, to_stream
from appliance.proto.xmlstream import StanzaReceived, StreamEnded, StreamOpened, StreamParser


class Stage(Enum):
    START = auto()          # waiting for a stream header
    PRE_TLS = auto()
    TLS_PENDING = auto()    # <proceed/> sent; the caller is doing the handshake
    PRE_AUTH = auto()
    AUTHENTICATED = auto()  # SASL done; waiting for bind
    BOUND = auto()
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Write pending bytes, then start TLS and call `tls_started`. Discard any buffered plaintext."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    username: str
    mechanism: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    username: str | None
    condition: str


@dataclass(frozen=True, slots=True)
class BindRequested:
    iq: Element
    resource: str | None     # None: the server must generate one


@dataclass(frozen=True, slots=True)
class PreAuthIQ:
    iq: Element              # e.g. in-band registration before login


@dataclass(frozen=True, slots=True)
class StanzaIn:
    stanza: Element


@dataclass(frozen=True, slots=True)
class NonzaIn:
    element: Element         # a top-level element of a registered namespace (e.g. stream management)


@dataclass(frozen=True, slots=True)
class Closed:
    error: StreamError | None = None   # None: the client closed the stream cleanly


Event = StartTLS | Authenticated | AuthFailed | BindRequested | PreAuthIQ | StanzaIn | NonzaIn | Closed
FeatureBuilder = Callable[[Stage], "list[Element]"]


@dataclass
class Settings:
    domain: str
    credentials: sasl.CredentialSource
    tls_available: bool = True
    tls_required: bool = True
    max_stanza_bytes: int = 262144
    max_depth: int = 32
    channel_binding: tuple[str, bytes] | None = None   # e.g. ('tls-server-end-point', data)
    preauth_namespaces: frozenset[str] = frozenset()   # IQ payloads allowed before login
    nonza_namespaces: frozenset[str] = frozenset()
    extra_features: FeatureBuilder | None = None       # features added by feature modules
    # Called with None before an attempt (per-address throttle) and with the username after it.
    auth_allowed: Callable[[str | None], bool] = field(default=lambda username: True)


_STANZA_TAGS = {f"{{{ns.CLIENT}}}{k}" for k in ("message", "presence", "iq")}
# XEP-0198 <r/> and <a/> before stream management is enabled carry nothing to act on. Stock clients
# send them on a fresh stream after a lost link (their ack timer outlives the old stream); ignoring
# them, as Prosody does, costs nothing, while a stream error would cost a phone a whole new login.
_STRAY_SM_ACKS = frozenset({f"{{{ns.SM}}}r", f"{{{ns.SM}}}a"})


class C2SStream:
    # One per connection, kept while it is idle: no instance dict (tests/test_session_footprint.py).
    __slots__ = ("settings", "tls_active", "stage", "username", "stream_id", "_out", "_events", "_parser",
                 "_sasl", "_mechanism", "_header_sent")

    def __init__(self, settings: Settings, *, tls_active: bool = False) -> None:
        self.settings = settings
        self.tls_active = tls_active
        self.stage = Stage.START
        self.username: str | None = None
        self.stream_id = ""
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._parser = self._new_parser()
        self._sasl: sasl.ScramExchange | sasl.PlainExchange | None = None
        self._mechanism = ""
        self._header_sent = False

    # ---- the caller's side -------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        if self.stage in (Stage.CLOSED, Stage.TLS_PENDING):
            return []  # after <proceed/>, plaintext sent before the handshake is an injection attempt
        try:
            for event in self._parser.feed(data):
                self._handle(event)
                if self.stage in (Stage.CLOSED, Stage.TLS_PENDING):
                    break
        except StreamError as error:
            self.fail(error)
        events, self._events = self._events, []
        return events

    def release_parser(self) -> bool:
        """Give back the XML parser's memory while the client is silent between stanzas (it is
        rebuilt on the next bytes, see StreamParser.release); False if the stream is mid-stanza."""
        return self._parser.release()

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data

    def tls_started(self) -> None:
        assert self.stage is Stage.TLS_PENDING
        self.tls_active = True
        self._restart()

    def bind_succeeded(self, iq: Element, full_jid: str) -> None:
        bind = etree.Element(f"{{{ns.BIND}}}bind", nsmap={None: ns.BIND})
        etree.SubElement(bind, f"{{{ns.BIND}}}jid").text = full_jid
        self.stage = Stage.BOUND
        self.send_stanza(iq_result(iq, bind))

    def resumed(self) -> None:
        """XEP-0198: a resumed session is bound already; no <bind/> follows."""
        assert self.stage is Stage.AUTHENTICATED
        self.stage = Stage.BOUND

    def bind_failed(self, iq: Element, error: StanzaError) -> None:
        self.send_stanza(error_reply(iq, error))

    def send_stanza(self, stanza: Element) -> None:
        self._out.append(to_stream(stanza))

    def send_raw(self, data: bytes) -> None:
        self._out.append(data)

    def fail(self, error: StreamError) -> None:
        """Send a stream error and close (RFC 6120 §4.9.1.1: header first if none was sent)."""
        if self.stage is Stage.CLOSED:
            return
        if not self._header_sent:
            self._send_header()
        self._out.append(error.to_xml() + STREAM_CLOSE)
        self.stage = Stage.CLOSED
        self._events.append(Closed(error))

    def close(self) -> None:
        """Close cleanly (e.g. server shutdown uses fail(StreamError('system-shutdown')))."""
        if self.stage is not Stage.CLOSED:
            self._out.append(STREAM_CLOSE)
            self.stage = Stage.CLOSED

    # ---- stream events ------------------------------------------------------------------

    def _new_parser(self) -> StreamParser:
        s = self.settings
        return StreamParser(max_stanza_bytes=s.max_stanza_bytes, max_depth=s.max_depth)

    def _restart(self) -> None:
        self._parser = self._new_parser()
        self._header_sent = False
        self.stage = Stage.START

    def _handle(self, event: object) -> None:
        if isinstance(event, StreamOpened):
            self._opened(event.attrs)
        elif isinstance(event, StreamEnded):
            self.close()
            self._events.append(Closed())
        elif isinstance(event, StanzaReceived):
            self._element(event.element)

    def _opened(self, attrs: dict[str, str]) -> None:
        self._send_header()
        if attrs.get("to", "").lower() != self.settings.domain:
            raise StreamError("host-unknown", f"this server serves {self.settings.domain}")
        if not attrs.get("version", "").startswith("1."):
            raise StreamError("unsupported-version", "XMPP 1.0 streams only")
        if self.username:
            self.stage = Stage.AUTHENTICATED  # restarts after SASL come before bind
        elif self.tls_active or not self.settings.tls_available:
            self.stage = Stage.PRE_AUTH
        else:
            self.stage = Stage.PRE_TLS
        self._out.append(self._features())

    def _send_header(self) -> None:
        self.stream_id = secrets.token_urlsafe(12)
        self._out.append(stream_header(from_=self.settings.domain, id_=self.stream_id))
        self._header_sent = True

    # ---- features -------------------------------------------------------------------------

    def _features(self) -> bytes:
        features = etree.Element(f"{{{ns.STREAM}}}features", nsmap={"stream": ns.STREAM})
        if self.stage is Stage.PRE_TLS:
            tls = etree.SubElement(features, f"{{{ns.TLS}}}starttls", nsmap={None: ns.TLS})
            if self.settings.tls_required:
                etree.SubElement(tls, f"{{{ns.TLS}}}required")
                return etree.tostring(features)
        if self.stage in (Stage.PRE_TLS, Stage.PRE_AUTH):
            self._add_sasl_features(features)
        if self.stage is Stage.AUTHENTICATED:
            etree.SubElement(features, f"{{{ns.BIND}}}bind", nsmap={None: ns.BIND})
            session = etree.SubElement(features, f"{{{ns.SESSION}}}session", nsmap={None: ns.SESSION})
            etree.SubElement(session, f"{{{ns.SESSION}}}optional")
        if self.settings.extra_features:
            for extra in self.settings.extra_features(self.stage):
                features.append(extra)
        return etree.tostring(features)

    def _offered(self) -> list[str]:
        cb = self.tls_active and self.settings.channel_binding is not None
        return sasl.offered_mechanisms(tls=self.tls_active, channel_binding=cb)

    def _add_sasl_features(self, features: Element) -> None:
        mechs = etree.SubElement(features, f"{{{ns.SASL}}}mechanisms", nsmap={None: ns.SASL})
        for name in self._offered():
            etree.SubElement(mechs, f"{{{ns.SASL}}}mechanism").text = name
        if self.tls_active and self.settings.channel_binding:
            cbs = etree.SubElement(features, f"{{{ns.SASL_CB}}}sasl-channel-binding", nsmap={None: ns.SASL_CB})
            etree.SubElement(cbs, f"{{{ns.SASL_CB}}}channel-binding", type=self.settings.channel_binding[0])

    # ---- elements ---------------------------------------------------------------------------

    def _element(self, el: Element) -> None:
        tag = el.tag
        if self.stage is Stage.BOUND:
            if tag in _STANZA_TAGS:
                self._events.append(StanzaIn(el))
            elif etree.QName(el).namespace in self.settings.nonza_namespaces:
                self._events.append(NonzaIn(el))
            else:
                raise StreamError("unsupported-stanza-type", f"unexpected {etree.QName(el).localname}")
        elif tag == f"{{{ns.TLS}}}starttls":
            self._starttls()
        elif self.stage is Stage.PRE_TLS and self.settings.tls_required:
            raise StreamError("policy-violation", "STARTTLS is required")  # RFC 6120 §5.3.1
        elif tag.startswith(f"{{{ns.SASL}}}"):
            self._sasl_element(el)
        elif tag == f"{{{ns.CLIENT}}}iq":
            self._iq_before_bound(el)
        elif tag in _STRAY_SM_ACKS:
            pass  # a phone's ack timer left over from its previous stream: no SM here yet, nothing to count
        elif etree.QName(el).namespace in self.settings.nonza_namespaces and self.stage is Stage.AUTHENTICATED:
            self._events.append(NonzaIn(el))
        else:
            raise StreamError("not-authorized", "authenticate and bind a resource first")

    def _starttls(self) -> None:
        if self.stage is not Stage.PRE_TLS:
            raise StreamError("policy-violation", "STARTTLS is not offered now")
        self._out.append(f"<proceed xmlns='{ns.TLS}'/>".encode())
        self.stage = Stage.TLS_PENDING
        self._events.append(StartTLS())

    def _iq_before_bound(self, iq: Element) -> None:
        payload = iq[0] if len(iq) else None
        if self.stage is Stage.AUTHENTICATED and payload is not None and payload.tag == f"{{{ns.BIND}}}bind":
            if iq.get("type") != "set":
                return self.send_stanza(error_reply(iq, StanzaError("bad-request")))
            resource = payload.findtext(f"{{{ns.BIND}}}resource")
            self._events.append(BindRequested(iq, resource.strip() if resource and resource.strip() else None))
        elif self.stage is Stage.PRE_AUTH and payload is not None and \
                etree.QName(payload).namespace in self.settings.preauth_namespaces:
            self._events.append(PreAuthIQ(iq))
        else:
            raise StreamError("not-authorized", "authenticate and bind a resource first")

    # ---- SASL -------------------------------------------------------------------------------------

    def _sasl_element(self, el: Element) -> None:
        if self.stage not in (Stage.PRE_TLS, Stage.PRE_AUTH):
            raise StreamError("policy-violation", "already authenticated")
        local = etree.QName(el).localname
        if local == "auth":
            return self._sasl_auth(el)
        if local == "abort":
            self._sasl = None
            return self._sasl_failure("aborted")
        if local == "response" and self._sasl is not None:
            return self._sasl_outcome(self._sasl.step(self._decode(el.text)))
        self._sasl_failure("malformed-request")

    def _sasl_auth(self, el: Element) -> None:
        mechanism = el.get("mechanism", "")
        if not self.settings.auth_allowed(None):
            return self._sasl_failure("temporary-auth-failure")  # this address failed too often
        exchange = sasl.start(mechanism, self.settings.credentials, domain=self.settings.domain,
                              offered=self._offered(), cb=self.settings.channel_binding if self.tls_active else None)
        if exchange is None:
            return self._sasl_failure("invalid-mechanism")
        self._sasl, self._mechanism = exchange, mechanism
        data = self._decode(el.text)
        if data is None:
            self._out.append(f"<challenge xmlns='{ns.SASL}'>=</challenge>".encode())
            return
        self._sasl_outcome(exchange.step(data))

    @staticmethod
    def _decode(text: str | None) -> bytes | None:
        if text is None or not text.strip():
            return None
        if text.strip() == "=":
            return b""
        try:
            return base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            return b"\xff"  # undecodable: the mechanism rejects it as malformed

    def _sasl_outcome(self, outcome: sasl.Outcome) -> None:
        if isinstance(outcome, sasl.Challenge):
            self._out.append(_sasl_xml("challenge", outcome.data))
            return
        self._sasl = None
        # Throttling is decided whatever the password was, so it never reveals a correct guess.
        if outcome.username and not self.settings.auth_allowed(outcome.username):
            return self._sasl_failure("temporary-auth-failure")
        if isinstance(outcome, sasl.Failure):
            self._events.append(AuthFailed(outcome.username, outcome.condition))
            return self._sasl_failure(outcome.condition)
        self.username = outcome.username
        self._out.append(_sasl_xml("success", outcome.data))
        self._events.append(Authenticated(outcome.username, self._mechanism))
        self._restart()

    def _sasl_failure(self, condition: str) -> None:
        self._out.append(f"<failure xmlns='{ns.SASL}'><{condition}/></failure>".encode())


def _sasl_xml(name: str, data: bytes | None) -> bytes:
    body = base64.b64encode(data).decode() if data else ("=" if data == b"" else "")
    return f"<{name} xmlns='{ns.SASL}'>{body}</{name}>".encode()
