"""The load generator of scripts/bench: logged-in sessions that behave like phones, and the scenarios
that drive them (logins, idle sessions, chat messages at a fixed rate, presence fan-out).

Every scenario runs in this one Trio process, which is not the servers' process; its own CPU is
measured too, only to say when it may have been the bottleneck. Server figures come from /proc
(benchlib.procstat), sampled by a `Meter` just before and just after the measured window.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio

from benchlib import procstat
from benchlib.servers import DOMAIN, Server
from benchlib.xmpp import NS_CLIENT, NS_SM, Client, Element, Endpoint, XmppError, attr, iq_answer, kind, local

PASSWORD = "bench password"
MECHANISM = ("SCRAM-SHA-1",)      # the one both servers have: Prosody 0.12's internal_hashed stores SHA-1 keys
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NO_STORE = "<no-store xmlns='urn:xmpp:hints'/>"
LOGIN_TIMEOUT = 60.0

Handler = Callable[["Session", Element, float], None]


# ---- one phone-like session ------------------------------------------------------------------------

class Session:
    """A client that logs in like a phone and then answers what a client must answer: <r/> with
    <a h=.../>, pings and other IQ requests. Messages and presence go to `on_stanza`."""

    def __init__(self, endpoint: Endpoint, username: str, tls: bool = True, on_stanza: Handler | None = None) -> None:
        self.client = Client(endpoint, wire=None, mechanisms=MECHANISM, starttls=tls)
        self.username = username
        self.jid = f"{username}@{DOMAIN}"
        self.on_stanza = on_stanza
        self.handled = 0            # XEP-0198 count of stanzas received since <enabled/>
        self.counting = False
        self.waiting: dict[str, trio.Event] = {}   # IQ id -> set when the answer comes
        self.answers: dict[str, Element] = {}
        self.closing = False        # we sent </stream:stream>
        self.closed = False         # the reader has ended

    async def login(self, *, sm: bool = True, roster: bool = True, presence: str | None = "<presence/>") -> None:
        """Connect, (STARTTLS,) SCRAM-SHA-1, bind, then resumable stream management, the roster
        and initial presence, each waited for before the next, as a phone does."""
        await self.client.connect()
        await self.client.login(self.username, PASSWORD, "bench")
        if sm:
            await self.client.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
            await self._until(lambda el: kind(el) in ("sm:enabled", "sm:failed"))
        if roster:
            await self.client.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
            await self._until(lambda el: kind(el) == "iq" and el.get("id") == "roster")
        if presence:
            await self.client.send(presence)

    async def _until(self, wanted: Callable[[Element], bool]) -> Element:
        """Read (and handle) elements until one is `wanted`."""
        while True:
            element = await self.client.receive()
            now = trio.current_time()
            if wanted(element):
                if kind(element) == "sm:failed":
                    raise XmppError(f"{self.username}: the server refused stream management")
                if kind(element) == "sm:enabled":
                    self.counting = True
                elif self.counting:
                    self.handled += 1
                return element
            await self.handle(element, now)

    async def run(self) -> None:
        """The reader, until the stream ends or the task is cancelled; then the connection is closed."""
        try:
            while True:
                element = await self.client.receive()
                await self.handle(element, trio.current_time())
        except XmppError as exc:
            if not self.closing or "malformed" in str(exc):
                raise
        finally:
            self.closed = True
            await self.client.aclose()

    async def handle(self, element: Element, now: float) -> None:
        what = kind(element)
        if self.counting and what in ("message", "presence", "iq"):
            self.handled += 1
        if what == "sm:r":
            await self.client.send(f"<a xmlns='{NS_SM}' h='{self.handled}'/>")
        elif what == "iq":
            reply = iq_answer(element)
            if reply is not None:
                await self.client.send(reply)
            elif element.get("id") in self.waiting:
                self.answers[element.get("id")] = element
                self.waiting.pop(element.get("id")).set()
        elif what in ("message", "presence") and self.on_stanza is not None:
            self.on_stanza(self, element, now)
        elif what == "{http://etherx.jabber.org/streams}error":
            text = " ".join(filter(None, (c.text for c in element)))
            raise XmppError(f"stream error {'/'.join(local(c) for c in element)}" + (f": {text}" if text else ""))

    async def iq(self, iq_id: str, xml: str, timeout: float = 60.0) -> Element:
        """Send an IQ request and wait for its answer (the reader must be running)."""
        self.waiting[iq_id] = done = trio.Event()
        await self.client.send(xml)
        with trio.fail_after(timeout):
            await done.wait()
        return self.answers.pop(iq_id)

    async def close(self, wait: float = 5.0) -> None:
        """For a session without a reader: acknowledge, </stream:stream>, read until the server has
        closed its stream too (or `wait` passes), close the connection."""
        await self.request_close()
        await self.client.aclose(wait_for_server=wait)

    async def request_close(self) -> None:
        """Acknowledge everything received (XEP-0198: the server must otherwise treat what is
        unacknowledged as undelivered, and may store it offline for the next login) and send
        </stream:stream>; a running reader then ends when the server closes its stream."""
        self.closing = True
        try:
            if self.counting:
                await self.client.send(f"<a xmlns='{NS_SM}' h='{self.handled}'/>")
            await self.client.send_close()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def archive_count(session: Session) -> int:
    """XEP-0313 query with RSM <max>0</max>: the number of messages in the session's own archive."""
    reply = await session.iq("count", f"<iq type='set' id='count'><query xmlns='{NS_MAM}' queryid='count'>"
                                      f"<set xmlns='{NS_RSM}'><max>0</max></set></query></iq>")
    text = reply.findtext(f".//{{{NS_RSM}}}count")
    if reply.get("type") != "result" or text is None:
        raise XmppError(f"archive query failed: {reply.get('type')}")
    return int(text)


class Crowd:
    """Many sessions logged in with bounded concurrency, each with its reader in one nursery."""

    def __init__(self, nursery: trio.Nursery, concurrency: int = 50) -> None:
        self.nursery = nursery
        self.limit = trio.CapacityLimiter(concurrency)
        self.sessions: list[Session] = []
        self.failures: list[str] = []      # logins that failed
        self.dropped: list[str] = []       # sessions that ended after their login, before we closed them
        self.close_errors: list[str] = []   # what went wrong after we sent </stream:stream>

    async def open(self, sessions: list[Session], **login: Any) -> float:
        """Log all of them in; returns the seconds it took. Failures are counted, not raised."""
        start = trio.current_time()
        async with trio.open_nursery() as logins:
            for session in sessions:
                logins.start_soon(self._open, session, login)
        return trio.current_time() - start

    async def _open(self, session: Session, login: dict[str, Any]) -> None:
        async with self.limit:
            try:
                with trio.fail_after(LOGIN_TIMEOUT):
                    await session.login(**login)
            except (XmppError, OSError, trio.TooSlowError) as exc:
                self.failures.append(f"{session.username}: {exc or type(exc).__name__}")
                await session.client.aclose()
                return
        self.sessions.append(session)
        self.nursery.start_soon(self._read, session)

    async def _read(self, session: Session) -> None:
        try:
            await session.run()
        except XmppError as exc:
            if session.closing:
                self.close_errors.append(f"{session.username} while closing: {exc}")
            else:
                self.dropped.append(f"{session.username}: {exc}")

    def dropped_figures(self) -> dict[str, Any]:
        return {"dropped_sessions": len(self.dropped), "dropped_examples": self.dropped[:3]}

    def alive(self) -> int:
        return sum(not s.closed for s in self.sessions)

    async def close(self, wait: float = 30.0) -> None:
        """Close every session cleanly, then wait (up to `wait` seconds) for the readers to end."""
        async with trio.open_nursery() as closing:
            for session in self.sessions:
                if not session.closed:
                    closing.start_soon(self._close, session)
        with trio.move_on_after(wait):
            while self.alive():
                await trio.sleep(0.05)

    async def _close(self, session: Session) -> None:
        async with self.limit:
            await session.request_close()


# ---- measuring a window -----------------------------------------------------------------------------

@dataclass
class Meter:
    """Server /proc figures (and the appliance's own counters) between `start` and `stop`."""
    server: Server
    before: procstat.Sample | None = None
    stats_before: dict[str, int] = field(default_factory=dict)
    client_before: float = 0.0
    machine_before: float = 0.0

    async def start(self) -> None:
        self.stats_before = await self._stats()
        self.client_before = procstat.own_cpu()
        self.machine_before = procstat.machine_cpu()
        self.before = procstat.sample(self.server.proc.pid)

    async def stop(self) -> dict[str, Any]:
        assert self.before is not None
        usage = procstat.sample(self.server.proc.pid) - self.before
        client_cpu = procstat.own_cpu() - self.client_before
        others = procstat.machine_cpu() - self.machine_before - usage.cpu - client_cpu
        stats = await self._stats()
        seconds = usage.seconds or 1e-9
        figures: dict[str, Any] = {
            "seconds": usage.seconds, "server_cpu_s": usage.cpu, "server_cpu_share": usage.cpu_share,
            "server_system_cpu_s": usage.system_cpu,   # the kernel's part: sockets, disk, fsync
            "write_bytes": usage.write_bytes, "rss_bytes": usage.rss,
            "client_cpu_share": client_cpu / seconds,
            "other_cpu_share": max(0.0, others / seconds),   # the rest of the machine: disturbance
        }
        if stats:
            figures["db_commits"] = stats["db_commits"] - self.stats_before["db_commits"]
            figures["db_writes"] = stats["db_writes"] - self.stats_before["db_writes"]
            figures["server_sessions"] = stats["sessions"]
        return figures

    async def _stats(self) -> dict[str, int]:
        if self.server.name != "appliance":
            return {}
        return await trio.to_thread.run_sync(procstat.appliance_stats, self.server.proc.pid, self.server.log)


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of unsorted values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def latency_figures(latencies: list[float], prefix: str = "latency") -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds."""
    figures = {f"{prefix}_p{p}_ms": _ms(percentile(latencies, p)) for p in (50, 90, 99)}
    figures[f"{prefix}_max_ms"] = _ms(max(latencies) if latencies else None)
    return figures


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def per(total: float | None, count: int, scale: float = 1.0) -> float | None:
    return None if total is None or not count else total * scale / count


# ---- 1. logins ----------------------------------------------------------------------------------------

async def logins(server: Server, count: int, concurrency: int, users: list[str]) -> dict[str, Any]:
    """`count` full logins, `concurrency` at a time: connect, STARTTLS, SCRAM-SHA-1, bind, roster,
    initial presence, close (waiting for the server's </stream:stream>)."""
    durations: list[float] = []
    failures: list[str] = []
    names = itertools.islice(itertools.cycle(users), count)

    async def worker() -> None:
        for name in names:  # shared: each worker takes the next login
            session = Session(server.endpoint, name)
            start = trio.current_time()
            try:
                with trio.fail_after(LOGIN_TIMEOUT):
                    await session.login(sm=False)
                    await session.close()
                durations.append(trio.current_time() - start)
            except (XmppError, OSError, trio.TooSlowError) as exc:
                failures.append(f"{session.username}: {exc or type(exc).__name__}")
                await session.client.aclose()

    meter = Meter(server)
    await meter.start()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    figures = await meter.stop()
    done = len(durations)
    figures.update(logins=done, failed=len(failures), failures=failures[:5],
                   logins_per_s=done / figures["seconds"] if figures["seconds"] else None,
                   cpu_ms_per_login=per(figures["server_cpu_s"], done, 1000),
                   **latency_figures(durations, "login"))
    if "db_commits" in figures:
        figures["commits_per_login"] = per(figures["db_commits"], done)
    return figures


# ---- 2. idle sessions ------------------------------------------------------------------------------

async def idle(server: Server, users: list[str], tls: bool, settle: float,
               then: Callable[[], Awaitable[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Log in len(users) phone-like sessions (SM with resume, roster, initial presence), let them
    sit for `settle` seconds answering <r/> and pings, and read the server's memory before and
    after. `then`, if given, runs while they are still connected (its figures go under "then")."""
    before = procstat.sample(server.proc.pid)
    figures: dict[str, Any] = {"sessions_wanted": len(users), "rss_before": before.rss}
    async with trio.open_nursery() as nursery:
        crowd = Crowd(nursery)
        meter = Meter(server)
        await meter.start()
        figures["login_seconds"] = await crowd.open([Session(server.endpoint, u, tls) for u in users])
        logging_in = await meter.stop()
        figures.update(login_cpu_ms_per_session=per(logging_in["server_cpu_s"], len(crowd.sessions), 1000),
                       login_server_cpu_share=logging_in["server_cpu_share"],
                       login_client_cpu_share=logging_in["client_cpu_share"])
        await meter.start()
        await trio.sleep(settle)
        window = await meter.stop()
        figures.update(crowd.dropped_figures())
        figures.update(
            sessions=crowd.alive(), failed=len(crowd.failures), failures=crowd.failures[:5],
            rss_after=window["rss_bytes"], idle_cpu_share=window["server_cpu_share"],
            # memory is what this window measures: other processes' CPU does not disturb it (not a note)
            client_cpu_share=window["client_cpu_share"], settle_other_cpu_share=window["other_cpu_share"],
            server_sessions=window.get("server_sessions"))
        figures["kb_per_session"] = per(figures["rss_after"] - before.rss, crowd.alive(), 1 / 1024)
        if then is not None:
            figures["then"] = await then()
            figures["sessions_after_then"] = crowd.alive()
        with trio.move_on_after(60):
            await crowd.close()
        figures.update(close_errors=len(crowd.close_errors), close_error_examples=crowd.close_errors[:3])
        nursery.cancel_scope.cancel()
    return figures


# ---- 3. messages ------------------------------------------------------------------------------------

@dataclass
class Ledger:
    """Messages by (pair, sequence number): when sent, when (and how often) received."""
    sent: dict[tuple[int, int], float] = field(default_factory=dict)
    received: dict[tuple[int, int], float] = field(default_factory=dict)
    duplicates: int = 0
    strays: int = 0
    max_lag: float = 0.0          # how late a send started after its scheduled time
    late_sends: int = 0           # sends more than 100 ms late

    def receive(self, session: Session, element: Element, now: float) -> None:
        if local(element) != "message" or element.find(f"{{{NS_CLIENT}}}body") is None:
            return
        try:
            pair, number = (int(x) for x in (element.get("id") or "").split("-")[1:3])
        except ValueError:
            self.strays += 1
            return
        key = (pair, number)
        if key in self.received:
            self.duplicates += 1
        elif key in self.sent:
            self.received[key] = now
        else:
            self.strays += 1

    def in_flight(self) -> int:
        return len(self.sent) - len(self.received)


async def messages(server: Server, pairs: int, rate: float, seconds: float, no_store: bool,
                   users: list[str], drain: float = 20.0, ack_every: int = 0) -> dict[str, Any]:
    """`pairs` sender/receiver sessions (TLS, SM), every sender sending chat messages with a body to
    its peer's bare JID, `rate` messages a second in all, on a fixed schedule (open loop) for
    `seconds`; then up to `drain` seconds for the last ones to arrive. With `ack_every`, a sender
    sends <r/> with every ack_every-th message (in the same write, as a phone does). Before and
    after: the first receiver's archive count (XEP-0313), to show whether the messages were archived."""
    ledger = Ledger()
    senders = [Session(server.endpoint, users[2 * i]) for i in range(pairs)]
    receivers = [Session(server.endpoint, users[2 * i + 1], on_stanza=ledger.receive) for i in range(pairs)]
    interval = pairs / rate                       # between two messages of one sender
    per_sender = int(seconds * rate / pairs)
    hint = NO_STORE if no_store else ""
    request = f"<r xmlns='{NS_SM}'/>"
    figures: dict[str, Any] = {"pairs": pairs, "rate": rate, "archived": not no_store, "sender_acks": ack_every}
    async with trio.open_nursery() as nursery:
        crowd = Crowd(nursery, concurrency=20)
        await crowd.open(senders + receivers)
        if crowd.failures:
            raise XmppError(f"{len(crowd.failures)} logins failed, e.g. {crowd.failures[0]}")
        count_before = await archive_count(receivers[0])
        meter = Meter(server)
        await meter.start()
        start = trio.current_time() + 0.1

        async def send(index: int) -> None:
            session, peer = senders[index], receivers[index].jid
            for number in range(per_sender):
                due = start + (number + index / pairs) * interval
                await trio.sleep_until(due)
                lag = trio.current_time() - due
                ledger.max_lag = max(ledger.max_lag, lag)
                ledger.late_sends += lag > 0.1
                ledger.sent[(index, number)] = trio.current_time()
                ask = request if ack_every and (number + 1) % ack_every == 0 else ""
                await session.client.send(
                    f"<message to={attr(peer)} type='chat' id='m-{index}-{number}'><body>Message {number} "
                    f"of pair {index}: the ship docks at six, bring the charts.</body>{hint}</message>{ask}")

        async with trio.open_nursery() as sending:
            for index in range(pairs):
                sending.start_soon(send, index)
        backlog = ledger.in_flight()
        sent_at = trio.current_time()
        with trio.move_on_after(drain):
            while ledger.in_flight() > 0:
                await trio.sleep(0.01)
        figures["drain_seconds"] = trio.current_time() - sent_at
        window = await meter.stop()
        figures.update(crowd.dropped_figures())
        count_after = await archive_count(receivers[0])
        await crowd.close()
        nursery.cancel_scope.cancel()
    sent, received = len(ledger.sent), len(ledger.received)
    latencies = [ledger.received[k] - ledger.sent[k] for k in ledger.received]
    figures.update(window)
    figures.update(
        sent=sent, received=received, lost=sent - received, duplicates=ledger.duplicates, strays=ledger.strays,
        backlog_at_end_of_sending=backlog, max_send_lag_ms=ledger.max_lag * 1000, late_sends=ledger.late_sends,
        cpu_ms_per_message=per(window["server_cpu_s"], sent, 1000),
        write_bytes_per_message=per(window["write_bytes"], sent),
        archive_count_before=count_before, archive_count_after=count_after,
        archived_by_first_receiver=count_after - count_before, sent_by_first_pair=per_sender,
        **latency_figures(latencies))
    if "db_commits" in window:
        figures["commits_per_message"] = per(window["db_commits"], sent)
        figures["writes_per_message"] = per(window["db_writes"], sent)
    return figures


# ---- 4. presence fan-out ---------------------------------------------------------------------------

async def presence(server: Server, hub: str, contacts: list[str], updates: int, spacing: float,
                   drain: float = 20.0) -> dict[str, Any]:
    """`hub` (whose roster holds every contact, subscription both) and all its contacts online
    (TLS, SM); the hub changes its presence `updates` times, `spacing` seconds apart. Measured: the
    server's CPU per delivered presence and, per update, the time until every contact had it."""
    hub_jid = f"{hub}@{DOMAIN}"
    arrivals: dict[int, list[float]] = defaultdict(list)   # update number -> arrival times
    seen_initial: set[str] = set()
    everyone = trio.Event()

    def on_presence(session: Session, element: Element, now: float) -> None:
        if local(element) != "presence" or (element.get("from") or "").split("/")[0] != hub_jid:
            return
        status = element.findtext(f"{{{NS_CLIENT}}}status") or ""
        if status.startswith("update "):
            arrivals[int(status.split()[1])].append(now)
        elif element.get("type") is None:
            seen_initial.add(session.username)
            if len(seen_initial) == len(contacts):
                everyone.set()

    figures: dict[str, Any] = {"contacts": len(contacts), "updates": updates, "spacing_s": spacing}
    async with trio.open_nursery() as nursery:
        crowd = Crowd(nursery)
        figures["login_seconds"] = await crowd.open([Session(server.endpoint, c, on_stanza=on_presence)
                                                     for c in contacts])
        hub_crowd = Crowd(nursery)
        await hub_crowd.open([Session(server.endpoint, hub)])
        if crowd.failures or hub_crowd.failures:
            raise XmppError(f"logins failed: {(crowd.failures + hub_crowd.failures)[:3]}")
        with trio.move_on_after(60):
            await everyone.wait()
        figures["saw_hub_online"] = len(seen_initial)
        await trio.sleep(2.0)
        hub_session = hub_crowd.sessions[0]
        if hub_session.closed:
            raise XmppError(f"the hub's session ended before the measurement: {hub_crowd.dropped}")
        meter = Meter(server)
        await meter.start()
        sent: dict[int, float] = {}
        start = trio.current_time()
        for number in range(1, updates + 1):
            await trio.sleep_until(start + (number - 1) * spacing)
            sent[number] = trio.current_time()
            try:
                await hub_session.client.send(f"<presence><show>away</show><status>update {number}</status>"
                                              "</presence>")
            except XmppError as exc:
                raise XmppError(f"the hub's session ended during the measurement ({exc}): {hub_crowd.dropped}")
        with trio.move_on_after(drain):
            while sum(len(arrivals[n]) for n in sent) < updates * len(contacts):
                await trio.sleep(0.01)
        window = await meter.stop()
        figures.update(crowd.dropped_figures())
        await crowd.close()
        await hub_crowd.close()
        nursery.cancel_scope.cancel()
    delivered = sum(len(arrivals[n]) for n in sent)
    complete = [max(arrivals[n]) - sent[n] for n in sent if len(arrivals[n]) == len(contacts)]
    each = [t - sent[n] for n in sent for t in arrivals[n]]
    figures.update(window)
    figures.update(
        delivered=delivered, missing=updates * len(contacts) - delivered,
        cpu_us_per_delivery=per(window["server_cpu_s"], delivered, 1e6),
        all_contacts_p50_ms=_ms(percentile(complete, 50)), all_contacts_max_ms=_ms(max(complete) if complete else None),
        **latency_figures(each, "delivery"))
    return figures


def write_log_tail(server: Server, lines: int = 5) -> list[str]:
    """The last warnings and errors this server process logged, for the report."""
    bad = [line for line in server.new_log_lines()
           if any(w in line for w in ("ERROR", "WARNING", "Traceback", "\terror\t", "\twarn\t"))
           and "Received SIGTERM" not in line]
    return bad[-lines:]
