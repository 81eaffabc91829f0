"""Who is connected: one Session per bound resource, and the table that finds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from appliance.proto.errors import StreamError
from appliance.proto.jid import JID
from appliance.proto.stanza import Element


@dataclass(frozen=True, slots=True)
class OwnedReceipt:
    """The receipt of a stanza that a feature tracks itself (not an offline row): when the client
    has it, Event.OWNED_CONFIRMED tells the feature; when its session ends without that, the stanza
    is not routed again but given back with Event.OWNED_RELEASED (the feature sends it again)."""
    owner: str        # the feature, e.g. "notification"
    id: int           # what the feature tracks, e.g. the notification's id
    username: str     # whose delivery it is


Receipt = int | OwnedReceipt   # an int: the stanza's offline row (features/offline.py)


@dataclass(eq=False, slots=True)
class Session:
    jid: JID                                  # full JID
    address: str                              # peer IP, for logs and limits
    push: Callable[[Element], bool]           # queue a stanza; False when the outbox is full
    terminate: Callable[[StreamError | None], None]
    push_wait: Callable[[Element], Awaitable[bool]]   # queue, waiting for room; False if the session ended
    presence: Element | None = None           # last broadcast available presence; None = unavailable
    priority: int = 0
    interested: bool = False                  # requested the roster (RFC 6121 §2.1.6)
    directed: set[JID] = field(default_factory=set)   # sent directed presence to these full JIDs
    # A feature may hold back what is delivered (XEP-0352 client state): gate(stanza) returns True
    # when it took the stanza, which then counts as delivered; it must push or hand it back later.
    gate: Callable[[Element], bool] | None = None
    state: dict[str, Any] = field(default_factory=dict)   # per-session state of features, by feature name
    # Delivery receipts: stanza -> its durable copy (offline row id) or an OwnedReceipt. The row is
    # deleted once the client has the stanza (XEP-0198 ack, or written to a stream without stream
    # management).
    receipts: dict[Element, Receipt] = field(default_factory=dict)
    sm: Any = None                            # proto.sm.StreamManagement once enabled
    link: Any = None                          # the connection serving it; None while hibernating
    closing: bool = False                     # terminate() was called; closed follows at unbind
    closed: bool = False

    @property
    def available(self) -> bool:
        return self.presence is not None and not self.closed

    @property
    def username(self) -> str:
        assert self.jid.local is not None
        return self.jid.local


class SessionTable:
    """Bound sessions by bare JID and resource."""

    def __init__(self) -> None:
        self._by_bare: dict[JID, dict[str, Session]] = {}

    def add(self, session: Session) -> Session | None:
        """Add a session; return the one it replaces (same full JID), which the caller must close."""
        resources = self._by_bare.setdefault(session.jid.bare, {})
        old = resources.get(session.jid.resource or "")
        resources[session.jid.resource or ""] = session
        return old

    def remove(self, session: Session) -> None:
        resources = self._by_bare.get(session.jid.bare)
        if resources and resources.get(session.jid.resource or "") is session:
            del resources[session.jid.resource or ""]
            if not resources:
                del self._by_bare[session.jid.bare]

    def get(self, full: JID) -> Session | None:
        return self._by_bare.get(full.bare, {}).get(full.resource or "")

    def of(self, bare: JID) -> list[Session]:
        return list(self._by_bare.get(bare, {}).values())

    def available(self, bare: JID) -> list[Session]:
        return [s for s in self._by_bare.get(bare, {}).values() if s.available]

    def has_resource(self, bare: JID, resource: str) -> bool:
        return resource in self._by_bare.get(bare, {})

    def all(self) -> list[Session]:
        return [s for resources in self._by_bare.values() for s in resources.values()]

    def __len__(self) -> int:
        return sum(len(r) for r in self._by_bare.values())
