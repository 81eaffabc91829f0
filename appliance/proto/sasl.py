"""SASL server side (RFC 6120 §6): SCRAM-SHA-1/256 (-PLUS with tls-server-end-point) via scramp, and PLAIN.

Sans-I/O: credentials come from a `CredentialSource` the caller supplies; nothing here touches storage.
Passwords are never stored: PLAIN is checked by deriving the SCRAM StoredKey and comparing.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

from scramp import ScramException, ScramMechanism

from appliance.proto.jid import InvalidJID, normalise_local

SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-1")
# What a CredentialSource returns: (salt, stored_key, server_key, iterations), as scramp expects.
AuthInfo = tuple[bytes, bytes, bytes, int]


class CredentialSource(Protocol):
    def credentials(self, username: str, mechanism: str) -> AuthInfo | None: ...

    def decoy(self, username: str, mechanism: str) -> AuthInfo:
        """Credentials for an unknown user that look like a real one's: the same salt every time,
        the configured iteration count. See `decoy_credentials`."""
        ...


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    username: str
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    condition: str           # RFC 6120 §6.5 condition, e.g. 'not-authorized'
    username: str | None = None
    text: str = ""


Outcome = Challenge | Success | Failure


def offered_mechanisms(*, tls: bool, channel_binding: bool) -> list[str]:
    """Strongest first. PLAIN only under TLS; -PLUS only when we have binding data to offer."""
    mechs: list[str] = []
    if channel_binding:
        mechs += [f"{m}-PLUS" for m in SCRAM]
    mechs += list(SCRAM)
    if tls:
        mechs.append("PLAIN")
    return mechs


def decode_saslname(name: str) -> str:
    return name.replace("=2C", ",").replace("=3D", "=")


def decoy_credentials(secret: bytes, username: str, mechanism: str, iterations: int) -> AuthInfo:
    """Deterministic stand-in credentials, so a probe cannot tell unknown users from known ones:
    the salt is stable per name and the count is the configured one. No PBKDF2 is run (real
    SCRAM logins run none on the server either), so the answer takes the same time."""
    digest = hashlib.sha256 if mechanism.startswith("SCRAM-SHA-256") else hashlib.sha1

    def derive(label: bytes) -> bytes:
        return hmac.new(secret, label + b"\0" + mechanism.encode() + b"\0" + username.encode(), digest).digest()
    return derive(b"salt")[:16], derive(b"stored"), derive(b"server"), iterations


class ScramExchange:
    def __init__(self, mechanism: str, source: CredentialSource, cb: tuple[str, bytes] | None) -> None:
        base = mechanism.removesuffix("-PLUS")
        self._base = base
        self._source = source
        self.username: str | None = None
        self._server = ScramMechanism(mechanism).make_server(self._lookup, channel_binding=cb)
        self._step = 0

    def _lookup(self, saslname: str) -> AuthInfo:
        try:
            self.username = normalise_local(decode_saslname(saslname))
        except InvalidJID:
            self.username = None
        found = self._source.credentials(self.username, self._base) if self.username else None
        if found is None:
            decoy = self._source.decoy(self.username or saslname, self._base)
            self.username = None
            return decoy
        return found

    def step(self, data: bytes) -> Outcome:
        try:
            text = data.decode("utf-8")
            if self._step == 0:
                self._step = 1
                self._server.set_client_first(text)
                return Challenge(self._server.get_server_first().encode())
            if self._step == 1:
                self._step = 2
                self._server.set_client_final(text)
                final = self._server.get_server_final().encode()
                if self.username is None:
                    return Failure("not-authorized")
                return Success(self.username, final)
        except (ScramException, UnicodeError) as exc:
            return Failure(_scram_condition(exc), self.username)
        return Failure("malformed-request")


def _scram_condition(exc: Exception) -> str:
    message = str(exc).lower()
    if "proof" in message or "invalid" in message and "password" in message:
        return "not-authorized"
    if isinstance(exc, UnicodeError) or "malformed" in message or "must" in message:
        return "malformed-request"
    return "not-authorized"


class PlainExchange:
    def __init__(self, source: CredentialSource, domain: str) -> None:
        self._source = source
        self._domain = domain
        self.username: str | None = None

    def step(self, data: bytes) -> Outcome:
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Failure("malformed-request")
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
            self.username = normalise_local(authcid)
        except (UnicodeError, InvalidJID):
            return Failure("not-authorized")
        if authzid and authzid not in (self.username, f"{self.username}@{self._domain}"):
            return Failure("invalid-authzid", self.username)
        found = self._source.credentials(self.username, "SCRAM-SHA-256")
        salt, stored_key, _, iterations = found or self._source.decoy(self.username, "SCRAM-SHA-256")
        _, derived, _, _ = ScramMechanism("SCRAM-SHA-256").make_auth_info(
            password, iteration_count=iterations, salt=salt)
        if found is None or not hmac.compare_digest(derived, stored_key):
            return Failure("not-authorized", self.username)
        return Success(self.username)


def start(mechanism: str, source: CredentialSource, *, domain: str,
          offered: list[str], cb: tuple[str, bytes] | None) -> ScramExchange | PlainExchange | None:
    """A new exchange for `mechanism`, or None if it is not one we offered."""
    if mechanism not in offered:
        return None
    if mechanism == "PLAIN":
        return PlainExchange(source, domain)
    return ScramExchange(mechanism, source, cb)
