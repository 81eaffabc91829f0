"""The TLS certificate's SHA-256 fingerprint, the pin invites carry (docs/pairing.md, "trust").

Here rather than in net/certs.py so that features, which may not import net, can put it in the
invites they make; certs.fingerprint_sha256 calls this one.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes


def fingerprint_sha256(cert_path: Path) -> str:
    """Uppercase hex pairs ("AB:CD:...") of SHA-256 over the DER form of the certificate; a chain
    file's first certificate is the server's own, the one clients see and pin."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
