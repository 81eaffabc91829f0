"""The routing table, keyed by (stanza kind, target, payload namespace), and stanza classification.

The table is filled by features at start and frozen; looking up a handler chain is one dict hit
after the first stanza of a given shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Awaitable, Callable

from lxml import etree

from appliance.core.session import Session
from appliance.proto.jid import JID, InvalidJID
from appliance.proto.stanza import Element

ANY = "*"


class Target(Enum):
    SERVER = "server"      # the domain itself
    ACCOUNT = "account"    # no 'to', or the sender's own bare JID: handled on the account's behalf
    BARE = "bare"          # another local account's bare JID
    FULL = "full"          # a local full JID
    REMOTE = "remote"      # another domain


ALL_TARGETS = frozenset(Target)
LOCAL_ACCOUNTS = frozenset({Target.ACCOUNT, Target.BARE})


@dataclass(slots=True)
class Routed:
    """A stanza on its way, with what the router learnt about it."""
    el: Element
    kind: str
    type: str | None
    from_: JID
    to: JID | None
    target: Target
    origin: Session | None
    receipt: int | None = None   # the durable copy of this message (offline row), once one is written
    # Database writes a handler queued (db.write_soon) to ride along with the next commit; the
    # router settles them before the stanza counts as handled (and is acknowledged to its sender).
    writes: list[Any] = field(default_factory=list)
    # Part of a burst its recipient caused itself (the answers to its own initial presence's
    # probes): delivery waits for room in the outbox instead of closing the session as too slow.
    patient: bool = False

    @property
    def payload(self) -> Element | None:
        return self.el[0] if len(self.el) else None

    @property
    def to_bare(self) -> JID:
        """The account this stanza concerns: 'to', or the sender's own account when 'to' is absent."""
        return (self.to or self.from_).bare


Handler = Callable[[Routed], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Route:
    kind: str
    target: Target
    namespace: str
    priority: int
    handler: Handler

    @property
    def owner(self) -> str:
        return handler_name(self.handler)


def handler_name(handler: Handler) -> str:
    """'module.function' of a routing handler, for listings and measurements."""
    module = getattr(handler, "__module__", "?").rsplit(".", 1)[-1]
    return f"{module}.{getattr(handler, '__name__', '?')}"


class RoutingTable:
    def __init__(self) -> None:
        self._routes: dict[tuple[str, Target, str], list[Route]] = {}
        self._chains: dict[tuple[str, Target, tuple[str, ...]], list[Handler]] = {}
        self.frozen = False

    def add(self, kind: str, namespace: str, handler: Handler, *,
            targets: frozenset[Target], priority: int = 0) -> None:
        if self.frozen:
            raise RuntimeError("the routing table is built once, at start")
        for target in targets:
            self._routes.setdefault((kind, target, namespace), []).append(
                Route(kind, target, namespace, priority, handler))

    def freeze(self) -> None:
        self.frozen = True

    def chain(self, kind: str, target: Target, namespaces: tuple[str, ...]) -> list[Handler]:
        key = (kind, target, namespaces)
        found = self._chains.get(key)
        if found is None:
            routes = [r for n in (*namespaces, ANY) for r in self._routes.get((kind, target, n), ())]
            routes.sort(key=lambda r: -r.priority)  # stable: equal priorities keep registration order
            found = self._chains[key] = list(dict.fromkeys(r.handler for r in routes))
        return found

    def rows(self) -> list[Route]:
        order = {t: i for i, t in enumerate(Target)}
        routes = [r for rs in self._routes.values() for r in rs]
        return sorted(routes, key=lambda r: (r.kind, order[r.target], r.namespace, -r.priority))


def classify(to: JID | None, sender: JID, domain: str) -> Target:
    if to is None:
        return Target.ACCOUNT
    if to.domain != domain:
        return Target.REMOTE
    if to.local is None:
        return Target.SERVER
    if to.resource is not None:
        return Target.FULL
    return Target.ACCOUNT if to == sender.bare else Target.BARE


def namespaces_of(el: Element, kind: str) -> tuple[str, ...]:
    """The payload namespaces that select handlers: an IQ's one child, every child of the others."""
    children = el[:1] if kind == "iq" else el
    seen = dict.fromkeys(etree.QName(c).namespace or "" for c in children if isinstance(c.tag, str))
    return tuple(seen)


def parse_to(el: Element) -> JID | None:
    """The 'to' address; raises InvalidJID for a malformed one."""
    to = el.get("to")
    return JID.parse(to) if to else None


__all__ = ["ALL_TARGETS", "ANY", "LOCAL_ACCOUNTS", "Handler", "InvalidJID", "Route", "Routed", "handler_name",
           "RoutingTable", "Target", "classify", "namespaces_of", "parse_to"]
