"""The appliance's TLS certificate: a self-signed one made on first start, and the server context.

Invites carry the certificate's SHA-256 fingerprint and clients pin it, so the certificate is kept
across starts and replaced only when it cannot serve: missing, unreadable, expiring, or not naming
the configured domain. A certificate the operator supplied is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

import idna
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.pairing import fingerprint
from appliance.pairing.links import lan_addresses

log = logging.getLogger("appliance.tls")

# Our certificates carry this organisation, so a later start can tell them from the operator's own.
SELF_SIGNED_ORG = "XMPP appliance self-signed"
VALIDITY = dt.timedelta(days=3650)
RENEW_BEFORE = dt.timedelta(days=30)
# A Pi has no real-time clock and may start with a stale time before NTP syncs: backdate a day.
BACKDATE = dt.timedelta(days=1)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def default_names(domain: str) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses a LAN client may use to reach this box."""
    host = socket.gethostname().lower()
    dns = _unique([domain.lower(), host + ".local", "localhost", host])
    ips = _unique(["127.0.0.1", "::1", *lan_addresses()])
    return dns, ips


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def ensure_certificate(cert_path: Path, key_path: Path, domain: str) -> bool:
    """Create the certificate if it cannot be used as it is; True when a new one was written."""
    reason = _replacement_reason(cert_path, key_path, domain)
    if reason is None:
        return False
    if reason != "missing":
        log.warning("replacing TLS certificate %s: %s; clients that pinned the old one must be "
                    "invited again", cert_path, reason)
    else:
        log.info("creating a self-signed TLS certificate for %s at %s", domain, cert_path)
    _write_self_signed(cert_path, key_path, domain)
    return True


def _replacement_reason(cert_path: Path, key_path: Path, domain: str) -> str | None:
    """Why the certificate must be made anew, or None to keep the files as they are."""
    if not cert_path.exists():
        return "missing"
    try:
        # An OSError (say, no permission) propagates: the operator must fix it, not lose the file.
        cert = _load_certificate(cert_path)
    except ValueError as exc:
        # It may still be someone's work (a half-copied chain): keep it under another name.
        aside = cert_path.with_name(cert_path.name + ".unreadable")
        os.replace(cert_path, aside)
        return f"unreadable ({exc}); moved to {aside}"
    problem = _certificate_problem(cert, key_path, domain)
    if problem is None:
        return None
    if not _is_ours(cert):
        log.warning("TLS certificate %s %s; it was not made by the appliance, so it is kept",
                    cert_path, problem)
        return None
    return problem


def _certificate_problem(cert: x509.Certificate, key_path: Path, domain: str) -> str | None:
    expires = cert.not_valid_after_utc
    if expires - dt.datetime.now(dt.UTC) < RENEW_BEFORE:
        return f"expires {expires:%Y-%m-%d}"
    if not _covers(cert, domain):
        return f"does not name the domain {domain!r}"
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return f"its key {key_path} is unusable ({exc})"
    if key.public_key() != cert.public_key():
        return f"its key {key_path} does not match it"
    return None


def _load_certificate(cert_path: Path) -> x509.Certificate:
    # A chain file starts with the server's own certificate, which is the one that matters here.
    return x509.load_pem_x509_certificate(cert_path.read_bytes())


def _is_ours(cert: x509.Certificate) -> bool:
    orgs = cert.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if cert.issuer != cert.subject or [o.value for o in orgs] != [SELF_SIGNED_ORG]:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _covers(cert: x509.Certificate, domain: str) -> bool:
    """Does the certificate name the domain, as a client checking RFC 6125 would see it?"""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False  # clients ignore the CN once they check names at all
    target = _as_ip(domain)
    if target is not None:
        return target in names.get_values_for_type(x509.IPAddress)
    wanted = _a_label(domain)
    for name in names.get_values_for_type(x509.DNSName):
        name = name.lower().rstrip(".")
        if name == wanted:
            return True
        # A wildcard covers exactly one leftmost label (RFC 6125 §6.4.3).
        if name.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == name[2:]:
            return True
    return False


def _as_ip(name: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def _a_label(name: str) -> str:
    """The ASCII form a certificate uses for an internationalised domain name."""
    name = name.lower().rstrip(".")
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError:
        return name  # e.g. underscores in a hostname: not IDNA, but still ASCII a client may send


def _write_self_signed(cert_path: Path, key_path: Path, domain: str, *,
                       not_after: dt.datetime | None = None) -> None:
    """Write a new key and certificate; `not_after` lets tests make an expired one."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_certificate(key, domain, not_after)
    if not key_path.parent.exists():
        key_path.parent.mkdir(parents=True, mode=0o700)
        key_path.parent.chmod(0o700)  # mkdir's mode is narrowed by the umask, never widened
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # Key first: a crash between the two writes leaves a key that does not match the old
    # certificate, which the next start detects and repairs.
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _build_certificate(key: ec.EllipticCurvePrivateKey, domain: str,
                       not_after: dt.datetime | None) -> x509.Certificate:
    dns, ips = default_names(domain)
    # An XMPP domain may be an IP literal (RFC 7622 §3.2): it then belongs among the IP entries.
    labels = [_a_label(n) for n in dns if _as_ip(n) is None]
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in labels if n.isascii()]
    sans += [x509.IPAddress(ip) for ip in map(_as_ip, [*dns, *ips]) if ip is not None]
    # CN is at most 64 characters; modern clients read only the SANs anyway.
    cn = _a_label(domain) if len(_a_label(domain)) <= 64 else "XMPP appliance"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, SELF_SIGNED_ORG)])
    not_after = not_after or dt.datetime.now(dt.UTC) + VALIDITY
    # Android's OkHttp (Conversations) and others reject server certificates lacking these.
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - VALIDITY - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    # O_EXCL with the final mode: the key is never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)  # the umask may have narrowed the mode; 0600 must be exact for the key
    os.replace(tmp, path)


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """The TLS context for STARTTLS and direct TLS (XEP-0368) listeners."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(cert_path, key_path)
    # Direct-TLS clients offer "xmpp-client"; a client offering none or others still connects.
    context.set_alpn_protocols(["xmpp-client"])
    return context


def fingerprint_sha256(cert_path: Path) -> str:
    """The pin that invites carry: uppercase hex pairs of SHA-256 over the DER certificate
    (computed in pairing, where features can reach it too)."""
    return fingerprint.fingerprint_sha256(cert_path)


def tls_server_end_point(cert_path: Path) -> bytes:
    """Channel-binding data for SCRAM-*-PLUS (RFC 5929 §4.1), the binding that works with TLS 1.3."""
    cert = _load_certificate(cert_path)
    algorithm = cert.signature_hash_algorithm
    # MD5 and SHA-1 are upgraded to SHA-256 by the RFC; Ed25519/Ed448 have no separate hash, and
    # SHA-256 is what other servers use for them too.
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(serialization.Encoding.DER))
    return digest.finalize()
