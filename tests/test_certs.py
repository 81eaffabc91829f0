"""The self-signed certificate: made once, kept across starts, replaced only for a reason."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import socket
import ssl
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.net import certs
from appliance.pairing import links

DOMAIN = "chat.example"


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "data" / "tls" / "cert.pem", tmp_path / "data" / "tls" / "key.pem"


def load(cert_path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert_path.read_bytes())


def san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_creates_certificate_with_names_and_private_key(paths: tuple[Path, Path]) -> None:
    cert_path, key_path = paths
    assert certs.ensure_certificate(cert_path, key_path, DOMAIN) is True
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    cert = load(cert_path)
    dns = san(cert).get_values_for_type(x509.DNSName)
    host = socket.gethostname().lower()
    assert {DOMAIN, "localhost", host + ".local"} <= set(dns)
    assert ipaddress.ip_address("127.0.0.1") in san(cert).get_values_for_type(x509.IPAddress)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DOMAIN
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > dt.timedelta(days=3640)


def test_kept_on_second_start(paths: tuple[Path, Path]) -> None:
    certs.ensure_certificate(*paths, DOMAIN)
    before = certs.fingerprint_sha256(paths[0])
    assert certs.ensure_certificate(*paths, DOMAIN) is False
    assert certs.fingerprint_sha256(paths[0]) == before


def test_replaced_when_domain_changes(paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    certs.ensure_certificate(*paths, DOMAIN)
    before = certs.fingerprint_sha256(paths[0])
    with caplog.at_level(logging.WARNING, logger="appliance.tls"):
        assert certs.ensure_certificate(*paths, "other.example") is True
    assert certs.fingerprint_sha256(paths[0]) != before
    assert "other.example" in san(load(paths[0])).get_values_for_type(x509.DNSName)
    assert "does not name the domain" in caplog.text


@pytest.mark.parametrize("days_left", [-1, 10])
def test_replaced_when_expired_or_expiring(paths: tuple[Path, Path], days_left: int,
                                           caplog: pytest.LogCaptureFixture) -> None:
    not_after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days_left)
    certs._write_self_signed(*paths, DOMAIN, not_after=not_after)
    with caplog.at_level(logging.WARNING, logger="appliance.tls"):
        assert certs.ensure_certificate(*paths, DOMAIN) is True
    assert load(paths[0]).not_valid_after_utc > not_after + dt.timedelta(days=3000)
    assert "expires" in caplog.text


def test_replaced_when_key_does_not_match(paths: tuple[Path, Path]) -> None:
    certs.ensure_certificate(*paths, DOMAIN)
    other = ec.generate_private_key(ec.SECP256R1())
    paths[1].write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    assert certs.ensure_certificate(*paths, DOMAIN) is True
    certs.server_context(*paths)  # loads only if key and certificate belong together


def test_unreadable_file_is_set_aside_and_replaced(paths: tuple[Path, Path],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    cert_path, key_path = paths
    cert_path.parent.mkdir(parents=True)
    cert_path.write_text("not a certificate")
    with caplog.at_level(logging.WARNING, logger="appliance.tls"):
        assert certs.ensure_certificate(cert_path, key_path, DOMAIN) is True
    assert "unreadable" in caplog.text
    assert cert_path.with_name("cert.pem.unreadable").read_text() == "not a certificate"
    load(cert_path)


def write_user_certificate(cert_path: Path, key_path: Path, domain: str, days: int = 90) -> bytes:
    """A certificate the operator brought: self-signed too, but without the appliance's mark."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pem


@pytest.mark.parametrize("days", [90, 5])
def test_user_certificate_is_never_overwritten(paths: tuple[Path, Path], days: int,
                                               caplog: pytest.LogCaptureFixture) -> None:
    pem = write_user_certificate(*paths, "xmpp.example.org", days=days)
    with caplog.at_level(logging.WARNING, logger="appliance.tls"):
        assert certs.ensure_certificate(*paths, DOMAIN) is False
    assert paths[0].read_bytes() == pem
    assert "kept" in caplog.text


def test_wildcard_user_certificate_covers_a_subdomain(paths: tuple[Path, Path],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    write_user_certificate(*paths, "*.example.org")
    with caplog.at_level(logging.WARNING, logger="appliance.tls"):
        assert certs.ensure_certificate(*paths, "xmpp.example.org") is False
    assert caplog.text == ""


def test_default_names_skip_link_local(monkeypatch: pytest.MonkeyPatch) -> None:
    ips = [SimpleNamespace(ip="127.0.0.1"), SimpleNamespace(ip="169.254.3.4"),
           SimpleNamespace(ip="192.168.1.20"), SimpleNamespace(ip=("fe80::1", 0, 2)),
           SimpleNamespace(ip=("2001:db8::5", 0, 0)), SimpleNamespace(ip="192.168.1.20")]
    monkeypatch.setattr(links.ifaddr, "get_adapters", lambda: [SimpleNamespace(ips=ips)])
    monkeypatch.setattr(certs.socket, "gethostname", lambda: "Pi")
    dns, addresses = certs.default_names(DOMAIN)
    assert dns == [DOMAIN, "pi.local", "localhost", "pi"]
    assert addresses == ["127.0.0.1", "::1", "192.168.1.20", "2001:db8::5"]


def handshake(context: ssl.SSLContext, cert_path: Path, server_hostname: str) -> tuple[str | None, bytes]:
    """Connect a verifying client to a real listener on 127.0.0.1; return ALPN and the greeting."""
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"<stream/>")
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(cert_path))
    client.set_alpn_protocols(["xmpp-client"])
    try:
        raw = socket.create_connection(listener.getsockname(), timeout=10)
        with client.wrap_socket(raw, server_hostname=server_hostname) as tls:
            result = tls.selected_alpn_protocol(), tls.recv(64)
    finally:
        thread.join(10)
        listener.close()
    assert not errors, errors  # only reached when the client side succeeded
    return result


@pytest.mark.parametrize("server_hostname", ["localhost", DOMAIN])
def test_tls_handshake_verifies_against_the_pinned_certificate(paths: tuple[Path, Path],
                                                               server_hostname: str) -> None:
    certs.ensure_certificate(*paths, DOMAIN)
    context = certs.server_context(*paths)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert handshake(context, paths[0], server_hostname) == ("xmpp-client", b"<stream/>")


def test_handshake_fails_for_a_name_the_certificate_lacks(paths: tuple[Path, Path]) -> None:
    certs.ensure_certificate(*paths, DOMAIN)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(certs.server_context(*paths), paths[0], "elsewhere.example")


def test_fingerprint_and_channel_binding(paths: tuple[Path, Path]) -> None:
    certs.ensure_certificate(*paths, DOMAIN)
    der = load(paths[0]).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der)
    assert certs.tls_server_end_point(paths[0]) == digest.digest()
    assert certs.fingerprint_sha256(paths[0]) == ":".join(f"{b:02X}" for b in digest.digest())
    assert len(certs.fingerprint_sha256(paths[0])) == 32 * 3 - 1


def test_channel_binding_uses_the_signature_hash(paths: tuple[Path, Path], tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA384()))
    path = tmp_path / "sha384.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert certs.tls_server_end_point(path) == hashlib.sha384(der).digest()
