"""JIDs (RFC 7622): parsing, PRECIS normalisation and the 1023-byte part limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import idna
import precis_i18n

_USERNAME = precis_i18n.get_profile("UsernameCaseMapped")
_RESOURCE = precis_i18n.get_profile("OpaqueString")
_MAX_PART = 1023
# RFC 7622 §3.3.1: these may not appear in a localpart even though PRECIS allows them.
_LOCAL_FORBIDDEN = set('"&\'/:<>@')


class InvalidJID(ValueError):
    """Raised for a JID that cannot be normalised; callers answer jid-malformed."""


def _limit(part: str, what: str) -> str:
    if not part or len(part.encode()) > _MAX_PART:
        raise InvalidJID(f"{what} must be 1 to {_MAX_PART} bytes")
    return part


def normalise_local(local: str) -> str:
    try:
        result = _limit(_USERNAME.enforce(_limit(local, "localpart")), "localpart")
    except UnicodeError as exc:
        raise InvalidJID(f"localpart: {exc}") from None
    # Checked after enforcement: width mapping turns a fullwidth '＠' or '／' into '@' or '/'.
    if _LOCAL_FORBIDDEN & set(result):
        raise InvalidJID("localpart contains a forbidden character")
    return result


def normalise_domain(domain: str) -> str:
    domain = _limit(domain.rstrip("."), "domainpart")
    if domain.startswith("[") and domain.endswith("]"):
        return domain.lower()  # IPv6 literal
    try:
        ascii_form = domain.encode("ascii").decode().lower()
    except UnicodeError:
        try:
            ascii_form = idna.encode(domain, uts46=True).decode()
        except idna.IDNAError as exc:
            raise InvalidJID(f"domainpart: {exc}") from None
        return _limit(idna.decode(ascii_form), "domainpart")
    if any(c in ascii_form for c in " @/\"'<>&:\\") or ".." in ascii_form or not ascii_form.isprintable():
        raise InvalidJID("domainpart contains a forbidden character")
    return ascii_form


def normalise_resource(resource: str) -> str:
    try:
        return _limit(_RESOURCE.enforce(_limit(resource, "resourcepart")), "resourcepart")
    except UnicodeError as exc:
        raise InvalidJID(f"resourcepart: {exc}") from None


@dataclass(frozen=True, slots=True)
class JID:
    local: str | None
    domain: str
    resource: str | None = None
    # Computed once: a routed stanza asks for its sender's bare JID and text several times.
    _bare: JID | None = field(default=None, init=False, repr=False, compare=False)
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> JID:
        return _parse(text)

    @property
    def bare(self) -> JID:
        if not self.resource:
            return self
        bare = self._bare
        if bare is None:
            bare = JID(self.local, self.domain)
            object.__setattr__(self, "_bare", bare)  # a cache, not a change: frozen still holds
        return bare

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    def with_resource(self, resource: str) -> JID:
        return JID(self.local, self.domain, normalise_resource(resource))

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = f"{self.local}@{self.domain}" if self.local else self.domain
            text = f"{text}/{self.resource}" if self.resource else text
            object.__setattr__(self, "_text", text)
        return text


@lru_cache(maxsize=4096)
def _parse(text: str) -> JID:
    if len(text.encode()) > 3 * _MAX_PART + 2:
        raise InvalidJID("JID too long")
    rest, slash, resource = text.partition("/")
    local, at, domain = rest.rpartition("@")
    if at and not local:
        raise InvalidJID("empty localpart")
    if slash and not resource:
        raise InvalidJID("empty resourcepart")
    return JID(
        normalise_local(local) if at else None,
        normalise_domain(domain),
        normalise_resource(resource) if slash else None,
    )
