"""XEP-0198 stream management, the shell's side: enabling, acks, hibernation and resumption.

The counters live in proto/sm.py; this module moves sessions between connections. A session whose
link breaks is *hibernated*: it stays bound (contacts still see it available) and whatever is sent
to it queues up, for `resume_timeout` seconds. If the phone comes back with <resume/>, the new
connection takes the session over and gets every unacknowledged stanza again, in order; if not,
the session ends and its stanzas go round again (offline storage keeps the messages).
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

import trio

from appliance.core.server import Server
from appliance.core.session import Session
from appliance.proto import ns
from appliance.proto.c2s import Stage
from appliance.proto.sm import StreamManagement, failed_xml, is_true, local, parse_h
from appliance.proto.stanza import Element

if TYPE_CHECKING:
    from appliance.net.c2s import Connection

log = logging.getLogger("appliance.sm")


class SmEnabled(bytes):
    """<enabled/> in the outbox: stanzas written after it are counted (XEP-0198 §4)."""


def stream_feature(stage: Stage, session: Session | None) -> Element | None:
    from lxml import etree
    if stage is Stage.AUTHENTICATED:
        return etree.Element(f"{{{ns.SM}}}sm", nsmap={None: ns.SM})
    return None


class _Sleeper:
    """What a hibernating session's sends go to."""

    def __init__(self, session: Session, unsent: list[Element], limit: int) -> None:
        self.session = session
        self.queue = unsent
        self.limit = limit
        self.scope = trio.CancelScope()
        self.resumed = False

    def push(self, stanza: Element) -> bool:
        if len(self.queue) >= self.limit:
            return False
        self.queue.append(stanza)
        return True

    async def push_wait(self, stanza: Element) -> bool:
        return self.push(stanza)

    def wake_now(self, error: object = None) -> None:
        self.scope.cancel()


class Hibernation:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.sleeping: dict[Session, _Sleeper] = {}
        self.nursery: trio.Nursery | None = None

    def hibernate(self, session: Session, unsent: list[Element]) -> None:
        assert self.nursery is not None and session.sm is not None
        sleeper = _Sleeper(session, unsent, self.server.config.limits.outbox_stanzas)
        session.push, session.push_wait, session.terminate = sleeper.push, sleeper.push_wait, sleeper.wake_now
        session.link = None
        session.closing = False  # a session cut for reading too slowly may still come back
        self.sleeping[session] = sleeper
        log.info("%s: link lost; session kept %d s for resumption (%d unacknowledged)",
                 session.jid, session.sm.max_resume, len(session.sm.unacked) + len(unsent))
        self.nursery.start_soon(self._expire, sleeper)

    async def _expire(self, sleeper: _Sleeper) -> None:
        with sleeper.scope:
            await trio.sleep(sleeper.session.sm.max_resume)
        if sleeper.resumed:
            return
        self.sleeping.pop(sleeper.session, None)
        log.info("%s: not resumed in time; session ended", sleeper.session.jid)
        await self.server.end_session(sleeper.session, sleeper.queue)

    def take(self, session: Session) -> list[Element] | None:
        sleeper = self.sleeping.pop(session, None)
        if sleeper is None:
            return None
        sleeper.resumed = True
        sleeper.scope.cancel()
        return sleeper.queue

    async def end_all(self) -> None:
        """Shutdown: no phone can resume on a server that is going away."""
        for sleeper in list(self.sleeping.values()):
            sleeper.wake_now()
        with trio.move_on_after(5):
            while self.sleeping:
                await trio.sleep(0.05)


def enable(conn: Connection, element: Element) -> bytes:
    """<enable/> after bind: start counting; with resume='true', make the session resumable."""
    session, settings = conn.session, conn.server.config.stream_management
    assert session is not None
    if session.sm is not None:
        return failed_xml("unexpected-request")
    asked = element.get("max")
    limit = int(settings.resume_timeout)
    if asked and asked.isdigit():
        limit = max(1, min(limit, int(asked)))
    resumption_id = secrets.token_urlsafe(18) if is_true(element.get("resume")) else None
    session.sm = StreamManagement(resumption_id, limit)
    if resumption_id:
        conn.server.resumable[resumption_id] = session
    log.debug("%s enabled stream management (resumable: %s)", session.jid, bool(resumption_id))
    return SmEnabled(session.sm.enabled_xml())


def find_resumable(conn: Connection, element: Element) -> tuple[Session | None, int]:
    """The session a <resume/> names, if it is this user's and still there."""
    h = parse_h(element)
    session = conn.server.resumable.get(element.get("previd", ""))
    if session is None or session.closed or session.username != conn.proto.username:
        return None, h
    return session, h


def take_over(conn: Connection, session: Session) -> list[Element]:
    """Detach `session` from its hibernation or from the connection that still holds it."""
    queued = conn.service.hibernation.take(session)
    if queued is not None:
        return queued
    old: Connection | None = session.link
    return old.surrender() if old is not None else []


def is_sm(element: Element) -> bool:
    return element.tag.startswith(f"{{{ns.SM}}}")


__all__ = ["Hibernation", "SmEnabled", "enable", "find_resumable", "is_sm", "local", "stream_feature", "take_over"]
