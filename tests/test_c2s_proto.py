"""Sans-I/O tests of the c2s negotiation: bytes in, events and bytes out, no sockets."""

from __future__ import annotations

import base64
import re

import pytest
from lxml import etree
from scramp import ScramClient, ScramMechanism

from appliance.proto import c2s, ns
from appliance.proto.errors import StanzaError
from appliance.proto.sasl import decoy_credentials

DOMAIN = "example.test"
HEADER = (f"<stream:stream xmlns='jabber:client' xmlns:stream='{ns.STREAM}' to='{DOMAIN}' "
          "version='1.0'>").encode()


class Credentials:
    def __init__(self) -> None:
        self.users = {m: {"alice": ScramMechanism(m).make_auth_info("secret", iteration_count=4096)}
                      for m in ("SCRAM-SHA-1", "SCRAM-SHA-256")}

    def credentials(self, username: str, mechanism: str):
        return self.users[mechanism].get(username)

    def decoy(self, username: str, mechanism: str):
        return decoy_credentials(b"k" * 32, username, mechanism, 4096)


def new_stream(**settings) -> c2s.C2SStream:
    return c2s.C2SStream(c2s.Settings(domain=DOMAIN, credentials=Credentials(), **settings))


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def text_of(out: bytes, tag: str) -> bytes:
    found = re.search(rf"<{tag} xmlns='{ns.SASL}'>([^<]*)</{tag}>".encode(), out)
    assert found, out
    return base64.b64decode(found.group(1))


def scram_login(stream: c2s.C2SStream, mechanism: str = "SCRAM-SHA-256", password: str = "secret",
                username: str = "alice") -> bytes:
    client = ScramClient([mechanism], username, password)
    stream.receive_data(f"<auth xmlns='{ns.SASL}' mechanism='{mechanism}'>{b64(client.get_client_first())}</auth>".encode())
    client.set_server_first(text_of(stream.data_to_send(), "challenge").decode())
    stream.receive_data(f"<response xmlns='{ns.SASL}'>{b64(client.get_client_final())}</response>".encode())
    return stream.data_to_send()


def through_tls(stream: c2s.C2SStream) -> None:
    stream.receive_data(HEADER)
    out = stream.data_to_send()
    assert b"<starttls" in out and b"<required/>" in out and b"mechanisms" not in out
    events = stream.receive_data(f"<starttls xmlns='{ns.TLS}'/>".encode())
    assert events == [c2s.StartTLS()]
    assert b"<proceed" in stream.data_to_send()
    stream.tls_started()
    stream.receive_data(HEADER)


def test_starttls_then_scram_then_bind() -> None:
    stream = new_stream()
    through_tls(stream)
    features = stream.data_to_send()
    assert b"<mechanism>SCRAM-SHA-256</mechanism>" in features and b"<mechanism>PLAIN</mechanism>" in features
    out = scram_login(stream)
    assert b"<success" in out
    assert stream.username == "alice"
    stream.receive_data(HEADER)
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in stream.data_to_send()
    events = stream.receive_data(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                                 b"<resource>phone</resource></bind></iq>")
    assert len(events) == 1 and isinstance(events[0], c2s.BindRequested) and events[0].resource == "phone"
    stream.bind_succeeded(events[0].iq, f"alice@{DOMAIN}/phone")
    assert f"<jid>alice@{DOMAIN}/phone</jid>".encode() in stream.data_to_send()
    events = stream.receive_data(b"<message to='bob@example.test'><body>hi</body></message>")
    assert isinstance(events[0], c2s.StanzaIn) and events[0].stanza.tag == f"{{{ns.CLIENT}}}message"


def test_wrong_password_is_not_authorized() -> None:
    stream = new_stream()
    through_tls(stream)
    stream.data_to_send()
    client = ScramClient(["SCRAM-SHA-1"], "alice", "wrong")
    stream.receive_data(f"<auth xmlns='{ns.SASL}' mechanism='SCRAM-SHA-1'>{b64(client.get_client_first())}</auth>".encode())
    client.set_server_first(text_of(stream.data_to_send(), "challenge").decode())
    events = stream.receive_data(f"<response xmlns='{ns.SASL}'>{b64(client.get_client_final())}</response>".encode())
    assert events == [c2s.AuthFailed("alice", "not-authorized")]
    assert b"<not-authorized/>" in stream.data_to_send()
    assert stream.username is None


def test_unknown_user_fails_like_a_wrong_password() -> None:
    stream = new_stream()
    through_tls(stream)
    stream.data_to_send()
    assert b"<not-authorized/>" in scram_login(stream, username="mallory", password="x")


def test_plain_only_after_tls_and_checks_scram_keys() -> None:
    stream = new_stream(tls_available=True, tls_required=False)
    stream.receive_data(HEADER)
    assert b"PLAIN" not in stream.data_to_send()
    stream.receive_data(f"<auth xmlns='{ns.SASL}' mechanism='PLAIN'>{b64(chr(0) + 'alice' + chr(0) + 'secret')}</auth>".encode())
    assert b"<invalid-mechanism/>" in stream.data_to_send()
    tls = new_stream()
    through_tls(tls)
    tls.data_to_send()
    tls.receive_data(f"<auth xmlns='{ns.SASL}' mechanism='PLAIN'>{b64(chr(0) + 'alice' + chr(0) + 'secret')}</auth>".encode())
    assert b"<success" in tls.data_to_send()


def test_channel_binding_plus_mechanisms_offered_only_with_binding_data() -> None:
    stream = new_stream(channel_binding=("tls-server-end-point", b"\x01" * 32))
    through_tls(stream)
    out = stream.data_to_send()
    assert b"SCRAM-SHA-256-PLUS" in out and b"tls-server-end-point" in out
    client = ScramClient(["SCRAM-SHA-256-PLUS"], "alice", "secret", channel_binding=("tls-server-end-point", b"\x01" * 32))
    stream.receive_data(f"<auth xmlns='{ns.SASL}' mechanism='SCRAM-SHA-256-PLUS'>{b64(client.get_client_first())}</auth>".encode())
    client.set_server_first(text_of(stream.data_to_send(), "challenge").decode())
    stream.receive_data(f"<response xmlns='{ns.SASL}'>{b64(client.get_client_final())}</response>".encode())
    out = stream.data_to_send()
    assert b"<success" in out
    client.set_server_final(text_of(out, "success").decode())  # the server proved it knows the key


def test_stanza_before_tls_is_a_policy_violation() -> None:
    stream = new_stream()
    stream.receive_data(HEADER)
    stream.data_to_send()
    events = stream.receive_data(b"<message to='bob@example.test'><body>x</body></message>")
    assert isinstance(events[-1], c2s.Closed) and events[-1].error.condition == "policy-violation"
    assert b"</stream:stream>" in stream.data_to_send()


def test_stanza_before_auth_is_not_authorized() -> None:
    stream = new_stream()
    through_tls(stream)
    stream.data_to_send()
    events = stream.receive_data(b"<message to='bob@example.test'><body>x</body></message>")
    assert events[-1].error.condition == "not-authorized"


def test_wrong_host_is_host_unknown_with_a_header_first() -> None:
    stream = new_stream()
    events = stream.receive_data(HEADER.replace(DOMAIN.encode(), b"elsewhere.test"))
    out = stream.data_to_send()
    assert out.index(b"<stream:stream") < out.index(b"host-unknown")
    assert events[-1].error.condition == "host-unknown"


def test_plaintext_after_starttls_is_ignored() -> None:
    """STARTTLS command injection: bytes pipelined after <starttls/> must not be processed."""
    stream = new_stream()
    stream.receive_data(HEADER)
    stream.data_to_send()
    events = stream.receive_data(f"<starttls xmlns='{ns.TLS}'/><auth xmlns='{ns.SASL}' mechanism='PLAIN'>AA==</auth>".encode())
    assert events == [c2s.StartTLS()]
    assert stream.data_to_send().count(b"<") == 1  # only <proceed/>


def test_throttled_login_gets_temporary_failure_even_with_right_password() -> None:
    stream = new_stream(auth_allowed=lambda username: username is None)
    through_tls(stream)
    stream.data_to_send()
    assert b"<temporary-auth-failure/>" in scram_login(stream)
    assert stream.username is None


def test_bind_failure_is_an_iq_error() -> None:
    stream = new_stream()
    through_tls(stream)
    stream.data_to_send()
    scram_login(stream)
    stream.receive_data(HEADER)
    stream.data_to_send()
    events = stream.receive_data(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert events[0].resource is None
    stream.bind_failed(events[0].iq, StanzaError("bad-request"))
    reply = etree.fromstring(stream.data_to_send())
    assert reply.get("type") == "error" and reply.get("id") == "b"
    assert stream.stage is c2s.Stage.AUTHENTICATED


@pytest.mark.parametrize("version", ["", "0.9"])
def test_old_stream_version_is_refused(version: str) -> None:
    stream = new_stream()
    header = HEADER.replace(b"version='1.0'", f"version='{version}'".encode() if version else b"")
    events = stream.receive_data(header)
    assert events[-1].error.condition == "unsupported-version"
