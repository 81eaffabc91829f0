"""The Feature API and the router: what every feature module is given in `setup(server)`.

Features register handlers (`hook`), event observers (`on`), stream features, pre-login IQ
handlers and disco features; then the table is frozen. `route` carries one stanza through the
table; `deliver` puts a stanza in one session's outbox.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from typing import Any, Awaitable, Callable

from appliance.config import Config
from appliance.core.auth import AuthManager
from appliance.core.events import Event
from appliance.core.router import Handler, Routed, RoutingTable, Target, classify, namespaces_of, parse_to
from appliance.core.session import OwnedReceipt, Receipt, Session, SessionTable
from appliance.proto.c2s import Stage
from appliance.proto.errors import StanzaError, StreamError
from appliance.proto.jid import JID, InvalidJID
from appliance.proto.stanza import Element, error_reply, kind_of
from appliance.store.db import Database, PendingWrite

log = logging.getLogger("appliance.router")

Observer = Callable[..., Awaitable[bool | None]]
PreAuthHandler = Callable[[Element, dict[str, Any]], Awaitable[Element]]
FeatureBuilder = Callable[[Stage, "Session | None"], "Element | None"]
NonzaHandler = Callable[[Session, Element], Awaitable[None]]


class Server:
    def __init__(self, config: Config, db: Database) -> None:
        self.config = config
        self.domain = config.domain
        self.jid = JID(None, config.domain)
        self.db = db
        self.sessions = SessionTable()
        self.table = RoutingTable()
        self.auth = AuthManager(db, config.limits, config.scram_iterations)
        self.started = time.time()
        self.stream_features: list[FeatureBuilder] = []
        self.preauth: dict[str, PreAuthHandler] = {}
        self.disco_features: dict[str, set[str]] = {"server": set(), "account": set()}
        self.nonza: dict[str, NonzaHandler] = {}          # top-level elements after bind, by namespace
        self.resumable: dict[str, Session] = {}           # XEP-0198 resumption id -> session
        # XEP-0114 components by domain: the connected one's send (False: its outbox is full), or
        # None while it is not connected (stanzas to it bounce). Filled by net/component.py.
        self.components: dict[str, Callable[[Element], bool] | None] = {}
        self.in_flight: Counter[Receipt] = Counter()      # receipts held by live sessions (and how many)
        self._observers: dict[Event, list[tuple[int, Observer]]] = {}

    # ---- the Feature API ----------------------------------------------------------------------

    def hook(self, kind: str, namespace: str, handler: Handler, *,
             targets: frozenset[Target], priority: int = 0) -> None:
        self.table.add(kind, namespace, handler, targets=targets, priority=priority)

    def on(self, event: Event, observer: Observer, priority: int = 0) -> None:
        observers = self._observers.setdefault(event, [])
        observers.append((priority, observer))
        observers.sort(key=lambda pair: -pair[0])

    async def emit(self, event: Event, *args: Any) -> bool:
        """Run observers by priority; the first that returns True ends the chain and emit returns True."""
        for _, observer in self._observers.get(event, ()):
            if await observer(*args):
                return True
        return False

    def add_stream_feature(self, builder: FeatureBuilder) -> None:
        self.stream_features.append(builder)

    def add_preauth_iq(self, namespace: str, handler: PreAuthHandler) -> None:
        self.preauth[namespace] = handler

    def add_nonza(self, namespace: str, handler: NonzaHandler) -> None:
        """Top-level elements of `namespace` after bind (e.g. XEP-0352 <active/>) go to `handler`."""
        self.nonza[namespace] = handler

    def add_disco_feature(self, var: str, *, server: bool = True, account: bool = False) -> None:
        if server:
            self.disco_features["server"].add(var)
        if account:
            self.disco_features["account"].add(var)

    # ---- sessions -------------------------------------------------------------------------------

    async def bind(self, username: str, resource: str | None, address: str,
                   push: Callable[[Element], bool],
                   terminate: Callable[[StreamError | None], None],
                   push_wait: Callable[[Element], Awaitable[bool]]) -> Session:
        """Bind a resource (RFC 6120 §7). A second login with the same full JID replaces the first."""
        bare = JID(username, self.domain)
        jid = bare.with_resource(resource) if resource else self._new_resource(bare)
        session = Session(jid, address, push, terminate, push_wait)
        old = self.sessions.add(session)
        if old is not None:
            log.info("%s logged in again from %s; closing the older session from %s", jid, address, old.address)
            await self._retire(old, StreamError("conflict", "replaced by a new connection for this resource"))
        log.info("%s bound from %s", jid, address)
        await self.emit(Event.SESSION_BOUND, session)
        return session

    def _new_resource(self, bare: JID) -> JID:
        while True:
            resource = f"appliance-{secrets.token_hex(4)}"
            if not self.sessions.has_resource(bare, resource):
                return bare.with_resource(resource)

    async def _retire(self, session: Session, error: StreamError | None) -> None:
        session.terminate(error)
        await self.unbind(session)

    async def unbind(self, session: Session) -> None:
        """The session is over: take it out of the table and let features react (unavailable, ...)."""
        if session.closed:
            return
        self.sessions.remove(session)
        await self.emit(Event.SESSION_CLOSED, session)
        session.closed = True
        session.presence = None

    def deliver(self, session: Session, stanza: Element, receipt: Receipt | None = None) -> bool:
        """Queue for one session. A full outbox means a reader too slow: close it, report failure.
        With a receipt (the stanza's durable copy), the copy is deleted once the client has it."""
        if session.closing or session.closed:
            return False
        if (session.gate is not None and session.gate(stanza)) or session.push(stanza):
            self._hold(session, stanza, receipt)
            return True
        session.closing = True
        log.warning("%s is not reading (outbox full); closing its session", session.jid)
        session.terminate(StreamError("policy-violation", "too many stanzas waiting: you read too slowly"))
        return False

    async def deliver_patiently(self, session: Session, stanza: Element, receipt: Receipt | None = None) -> bool:
        """Queue for one session, waiting while its outbox is full: for bulk sends (offline messages)
        that must not make a reader look too slow. Ends when the stanza is queued or the session ends."""
        if session.closing or session.closed or not await session.push_wait(stanza):
            return False
        self._hold(session, stanza, receipt)
        return True

    def _hold(self, session: Session, stanza: Element, receipt: Receipt | None) -> None:
        if receipt is not None:
            session.receipts[stanza] = receipt
            self.in_flight[receipt] += 1

    def _release(self, session: Session, stanza: Element) -> Receipt | None:
        receipt = session.receipts.pop(stanza, None)
        if receipt is not None:
            self.in_flight[receipt] -= 1
            if self.in_flight[receipt] <= 0:
                del self.in_flight[receipt]
        return receipt

    async def confirm(self, session: Session, stanzas: list[Element]) -> None:
        """The client has these stanzas: their durable copies can go."""
        done = [r for s in stanzas if (r := self._release(session, s)) is not None]
        stored = [r for r in done if not isinstance(r, OwnedReceipt)]
        if stored:
            await self.emit(Event.DELIVERY_CONFIRMED, session.username, stored)
        if owned := [r for r in done if isinstance(r, OwnedReceipt)]:
            await self.emit(Event.OWNED_CONFIRMED, session.username, owned)

    async def end_session(self, session: Session, unsent: list[Element]) -> None:
        """A session is over for good; what the client never confirmed goes round again."""
        if session.sm is not None and session.sm.id is not None:
            self.resumable.pop(session.sm.id, None)
        unconfirmed = (list(session.sm.unacked) if session.sm is not None else []) + unsent
        await self.unbind(session)
        await self.undelivered(session, unconfirmed)
        if session.receipts:  # e.g. stanzas a feature held back and never handed back
            for stanza in list(session.receipts):
                self._release(session, stanza)
            await self.emit(Event.RECEIPTS_RELEASED, session.username)

    async def undelivered(self, session: Session, stanzas: list[Element]) -> None:
        """Stanzas a session will never get: messages go round again (another resource, or offline
        storage; one already stored keeps its stored copy), requests bounce; presence is state and
        is re-sent on probe. A stanza with an OwnedReceipt goes back to the feature that owns it."""
        owned: list[OwnedReceipt] = []
        for stanza in stanzas:
            receipt = self._release(session, stanza)
            kind = kind_of(stanza)
            if isinstance(receipt, OwnedReceipt):
                owned.append(receipt)
            elif kind == "message" and stanza.get("type") != "error":
                await self.route(stanza, receipt=receipt)
            elif kind == "iq" and stanza.get("type") in ("get", "set"):
                await self.route(error_reply(stanza, StanzaError("recipient-unavailable")))
        if owned:
            await self.emit(Event.OWNED_RELEASED, session.username, owned)

    # ---- routing ----------------------------------------------------------------------------------

    async def route(self, el: Element, origin: Session | None = None, receipt: int | None = None, *,
                    patient: bool = False, writes: list[PendingWrite] | None = None) -> None:
        """Hand a stanza to its handlers. It counts as handled once the writes they queued have
        committed: route waits for them, or, given a `writes` list, appends them there for the
        caller to settle (a client's reader settles all the stanzas of one read at once)."""
        kind = kind_of(el)
        if kind is None:
            return
        if origin is not None:
            el.set("from", str(origin.jid))
            sender = origin.jid
        else:
            sender = JID.parse(el.get("from") or self.domain)
        try:
            to = parse_to(el)
        except InvalidJID as exc:
            return await self._bounce(el, origin, StanzaError("jid-malformed", str(exc)))
        target = classify(to, sender, self.domain)
        if target is Target.REMOTE and to is not None and to.domain in self.components:
            return await self._to_component(el, origin, to.domain)
        routed = Routed(el, kind, el.get("type"), sender, to, target, origin, receipt, patient=patient)
        try:
            await self._dispatch(routed)
        finally:
            if writes is None:
                await self.settle(routed.writes)
            else:
                writes.extend(routed.writes)

    async def _dispatch(self, routed: Routed) -> None:
        try:
            for handler in self.table.chain(routed.kind, routed.target, namespaces_of(routed.el, routed.kind)):
                if await handler(routed):
                    return
        except StanzaError as error:
            return await self._bounce(routed.el, routed.origin, error)
        except Exception:  # a bug in one handler costs one stanza, never the session or the server
            log.exception("internal error routing a %s from %s", routed.kind, routed.from_)
            return await self._bounce(routed.el, routed.origin, StanzaError("internal-server-error"))
        await self._unhandled(routed)

    async def _to_component(self, el: Element, origin: Session | None, domain: str) -> None:
        """A component's domain is not an account: the stanza goes to its connection as it is."""
        send = self.components[domain]
        if send is not None and send(el):
            return
        if kind_of(el) != "presence" and el.get("type") != "result":
            # 'wait': the app server may come back; a sender must not take this as permanent
            await self._bounce(el, origin, StanzaError("remote-server-timeout", f"{domain} is not connected"))

    async def settle(self, writes: list[PendingWrite]) -> None:
        """Handled means durable: wait for the writes handlers queued (the archive, durable copies)."""
        for job in writes:
            try:
                await self.db.settle(job)
            except Exception:
                log.exception("a database write (%s) of a routed stanza failed", job.fn.__qualname__)

    async def _unhandled(self, routed: Routed) -> None:
        if routed.kind == "presence" or routed.type in ("error", "result"):
            return
        condition = "remote-server-not-found" if routed.target is Target.REMOTE else "service-unavailable"
        await self._bounce(routed.el, routed.origin, StanzaError(condition))

    async def _bounce(self, el: Element, origin: Session | None, error: StanzaError) -> None:
        """Answer a stanza with an error; never answer an error (RFC 6120 §8.3.1)."""
        if el.get("type") == "error":
            return
        reply = error_reply(el, error)
        if origin is not None:
            if el.get("to") is None:
                reply.attrib.pop("from", None)
            self.deliver(origin, reply)
        elif reply.get("to"):
            reply.set("from", el.get("to") or self.domain)
            await self.route(reply)

    async def reply(self, routed: Routed, stanza: Element) -> None:
        """Send an answer back to whoever sent `routed` (a session, or a local account)."""
        if routed.origin is not None and stanza.get("to") in (None, str(routed.origin.jid)):
            self.deliver(routed.origin, stanza)
        else:
            await self.route(stanza)

    def features_for(self, stage: Stage, session: Session | None = None) -> list[Element]:
        built = (builder(stage, session) for builder in self.stream_features)
        return [el for el in built if el is not None]
