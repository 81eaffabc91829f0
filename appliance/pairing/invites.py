"""Invites, the model: what an invite is, when it is still good, and the xmpp: URI that carries it.

Two kinds, as stock clients (Conversations, Snikket, Monal) understand them (XEP-0401, XEP-0379,
XEP-0445; docs/pairing.md):

- an *account* invite lets someone register: `xmpp:DOMAIN?register;preauth=TOKEN`, or
  `xmpp:USER@DOMAIN?register;preauth=TOKEN` when the username is preset;
- a *contact* invite adds the inviter: `xmpp:INVITER@DOMAIN?roster;preauth=TOKEN;ibr=y`; a new
  user may register with it (`ibr=y`), and either way both sides end up subscribed.

Every URI also carries `tls-sha256=HEX`, the SHA-256 of the server's TLS certificate: stock clients
ignore parameters they do not know, the appliance's own client pins it (docs/pairing.md, "trust").
A token is 24 URL-safe characters (18 random bytes), like Prosody's. Times are unix seconds.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

ACCOUNT, CONTACT = "account", "contact"
KINDS = (ACCOUNT, CONTACT)
FINGERPRINT_PARAM = "tls-sha256"
DEFAULT_TTL = 7 * 86400.0          # an invite nobody set an expiry for lasts a week
_TOKEN_BYTES = 18


@dataclass(frozen=True)
class Invite:
    token: str
    kind: str                       # ACCOUNT or CONTACT
    inviter: str | None             # localpart of the inviting account; None: made by an admin
    username: str | None = None     # preset localpart for the account it creates
    max_uses: int = 1               # 0: any number of uses until it expires
    uses: int = 0
    created: float = 0.0
    expires: float | None = None    # None: never
    revoked: bool = False
    admin: bool = False             # the account it creates is an administrator
    reset: bool = False             # sets a new password for the existing account `username`

    def problem(self, now: float) -> str | None:
        """Why this invite cannot be used now ("revoked", "expired", "used up"), or None."""
        if self.revoked:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        if self.max_uses and self.uses >= self.max_uses:
            return "used up"
        return None

    def used_once(self) -> Invite:
        return replace(self, uses=self.uses + 1)


def new_token() -> str:
    # Never a leading '-': `appliance invite revoke TOKEN` would read it as an option.
    while (token := secrets.token_urlsafe(_TOKEN_BYTES)).startswith("-"):
        pass
    return token


def new_invite(kind: str, *, inviter: str | None, now: float, username: str | None = None,
               max_uses: int = 1, ttl: float | None = DEFAULT_TTL, admin: bool = False) -> Invite:
    """A fresh invite. A contact invite needs an inviter: it is the contact the invitee gets."""
    if kind not in KINDS:
        raise ValueError(f"invite kind must be one of {', '.join(KINDS)}")
    if kind == CONTACT and not inviter:
        raise ValueError("a contact invite needs the inviting account")
    if max_uses < 0:
        raise ValueError("max_uses must be 0 (unlimited) or more")
    expires = None if ttl is None else now + ttl
    return Invite(new_token(), kind, inviter, username, max_uses, 0, now, expires, False, admin)


def invite_uri(invite: Invite, domain: str, fingerprint: str | None) -> str:
    """The xmpp: URI a QR code shows. `fingerprint`: SHA-256 of the certificate, any case, colons
    or not (certs.fingerprint_sha256 gives 'AB:CD:...'); it travels as lowercase hex."""
    if invite.kind == CONTACT:
        assert invite.inviter is not None
        target, action, extra = f"{_local(invite.inviter)}@{domain}", "roster", ["ibr=y"]
    else:
        target = f"{_local(invite.username)}@{domain}" if invite.username else domain
        action, extra = "register", []
    params = [action, f"preauth={invite.token}", *extra]
    if fingerprint:
        params.append(f"{FINGERPRINT_PARAM}={normalise_fingerprint(fingerprint)}")
    return f"xmpp:{target}?{';'.join(params)}"


def normalise_fingerprint(fingerprint: str) -> str:
    hexdigits = fingerprint.replace(":", "").strip().lower()
    if len(hexdigits) != 64 or any(c not in "0123456789abcdef" for c in hexdigits):
        raise ValueError(f"not a SHA-256 fingerprint: {fingerprint!r}")
    return hexdigits


def _local(localpart: str | None) -> str:
    # RFC 5122 §2.2: characters outside the URI's allowed set in a localpart are percent-encoded.
    return quote(localpart or "", safe="!$&'()*+,=-._~")


@dataclass(frozen=True)
class ParsedUri:
    """An xmpp: invite URI taken apart (for the appliance's own client and for tests)."""
    jid: str                        # the part before '?': a domain or local@domain
    action: str                     # 'register', 'roster', ...
    params: dict[str, str]

    @property
    def token(self) -> str | None:
        return self.params.get("preauth")

    @property
    def fingerprint(self) -> str | None:
        return self.params.get(FINGERPRINT_PARAM)


def parse_uri(uri: str) -> ParsedUri:
    """Split `xmpp:JID?ACTION;key=value;...` (RFC 5122, XEP-0147). Raises ValueError."""
    if not uri.startswith("xmpp:"):
        raise ValueError("not an xmpp: URI")
    rest = uri[len("xmpp:"):]
    if rest.startswith("//"):
        raise ValueError("xmpp: URIs with an authority component are not invites")
    jid, _, query = rest.partition("?")
    if not jid:
        raise ValueError("the URI names no JID")
    action, *pairs = query.split(";") if query else ("",)
    params: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        params[unquote(key)] = unquote(value)
    return ParsedUri(unquote(jid), action, params)
