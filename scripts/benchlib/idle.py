"""Idle phone benchmark: bytes on the wire and wake-ups per hour for a client with CSI inactive and
N chatty contacts, against the appliance and against Prosody, one after the other, in the same run.

The idle client logs in over STARTTLS, enables carbons and resumable stream management, sends
initial presence, is subscribed both ways to every contact, then sends <inactive/> (XEP-0352) and
from then on only reads, answering what a client must answer (<r/> with <a/>, pings, IQ requests).
Meanwhile every contact changes presence every few seconds and a few of them send it a chat message
about once a minute. All of it is measured below TLS on the idle client's socket (bench/wire.py).

A *wake-up* is a burst of traffic on the idle client's connection, in either direction: a transfer
more than 100 ms after the previous one starts a new burst (what turns a phone's radio and CPU on).
The same count with a 10 s gap approximates a cellular radio's tail time.

Run: scripts/bench-idle [--seconds N] [--contacts 20] (scripts/bench-idle --help).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import random
import shutil
import statistics
import sys
import tempfile
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trio

from benchlib import servers
from benchlib.servers import DOMAIN, Server, SetupError
from benchlib.wire import RX, TX, bursts, radio_on, tcp_counters
from benchlib.xmpp import NS_CLIENT, NS_SM, Client, Element, Endpoint, XmppError, attr, iq_answer, kind, namespace

PASSWORD = "idle bench password"
IDLE = "idle"
WAKE_GAP = 0.1          # seconds of silence that separate two wake-ups
RADIO_TAIL = 10.0       # a cellular radio stays up about this long after the last packet
SETTLE = 3.0            # after the subscriptions, before <inactive/>
LAST_MESSAGE = 10.0     # no message in the last seconds: each has time to arrive inside the window
CAPS = ("<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://bench.test/client' "
        "ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/>")
SHOWS = (None, "away", "chat", "dnd", "xa")
STATUSES = ("in a meeting", "on the road", "back soon", "lunch", "working from the ship", "offline at six")


@dataclass
class Settings:
    seconds: float
    contacts: int
    senders: int
    presence_interval: float
    message_interval: float
    seed: int

    def contact_names(self) -> list[str]:
        return [f"c{n:02d}" for n in range(1, self.contacts + 1)]


@dataclass
class Ledger:
    """Chat messages the contacts sent to the idle client: id -> time sent / time parsed there."""
    sent: dict[str, float] = field(default_factory=dict)
    received: dict[str, float] = field(default_factory=dict)

    def latencies(self) -> list[float]:
        return [self.received[i] - self.sent[i] for i in self.received if i in self.sent]


@dataclass
class Result:
    server: str
    version: str
    seconds: float
    rx_bytes: int = 0            # on the wire (TLS records), server -> idle client
    tx_bytes: int = 0            # idle client -> server
    rx_plain: int = 0            # the same after TLS decryption
    tx_plain: int = 0
    wakeups: int = 0             # bursts, either direction, separated by > WAKE_GAP
    radio_wakeups: int = 0       # the same with RADIO_TAIL
    radio_seconds: float = 0.0   # time a radio with RADIO_TAIL would be on
    rx_bursts: int = 0           # bursts of incoming data only
    idle_bursts: int = 0         # wake-ups that brought no chat message
    writes: int = 0              # sends by the idle client (each is a transmission)
    segments: tuple[int, int] | None = None   # TCP segments (out, in) on loopback, pure ACKs included
    received: Counter[str] = field(default_factory=Counter)     # element kind -> count
    received_xml: Counter[str] = field(default_factory=Counter)  # element kind -> bytes after TLS
    answered: Counter[str] = field(default_factory=Counter)     # what the idle client had to send
    presence_sent: int = 0       # presence changes the contacts made
    messages_sent: int = 0
    messages_received: int = 0
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def per_hour(self, value: float) -> float:
        return value * 3600.0 / self.seconds

    @property
    def median_latency_ms(self) -> float | None:
        return statistics.median(self.latencies) * 1000 if self.latencies else None


# ---- the idle phone ------------------------------------------------------------------------------

class IdlePhone:
    """The measured client. Its reader answers what must be answered and tallies what arrives."""

    def __init__(self, endpoint: Endpoint, contacts: list[str], ledger: Ledger) -> None:
        self.client = Client(endpoint)
        self.contacts = {f"{name}@{DOMAIN}" for name in contacts}
        self.ledger = ledger
        self.seen: set[str] = set()             # contacts whose available presence arrived
        self.all_seen = trio.Event()
        self.enabled = trio.Event()
        self.counting = False                   # XEP-0198: stanzas count from <enabled/> on
        self.handled = 0
        self.window: tuple[float, float] | None = None
        self.arrivals: list[tuple[float, str, int, bool]] = []   # time, kind, bytes after TLS, chat message?
        self.answers: list[tuple[float, str]] = []

    async def connect(self) -> None:
        await self.client.connect()
        await self.client.login(IDLE, PASSWORD, "phone")

    async def start_session(self) -> None:
        """What a phone does after bind: roster, carbons, resumable stream management, presence."""
        await self.client.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
        await self.client.send("<iq type='set' id='carbons'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        await self.client.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
        with trio.fail_after(10):
            await self.enabled.wait()
        await self.client.send(f"<presence>{CAPS}</presence>")

    async def subscribe_all(self) -> None:
        for contact in sorted(self.contacts):
            await self.client.send(f"<presence to='{contact}' type='subscribe'/>")

    async def go_inactive(self) -> None:
        await self.client.send("<inactive xmlns='urn:xmpp:csi:0'/>")

    async def answer(self, what: str, xml: str) -> None:
        self.answers.append((trio.current_time(), what))
        await self.client.send(xml)

    async def read(self) -> None:
        while True:
            element, size = await self.client.receive_sized()
            await self.handle(element, size, trio.current_time())

    async def handle(self, element: Element, size: int, now: float) -> None:
        what = kind(element)
        chat = what == "message" and element.find(f"{{{NS_CLIENT}}}body") is not None
        self.arrivals.append((now, what, size, chat))
        if namespace(element) == NS_CLIENT and self.counting:
            self.handled += 1
        if what == "sm:enabled":
            self.counting = True
            self.enabled.set()
        elif what == "sm:failed":
            raise XmppError("the server refused stream management")
        elif what == "sm:r":
            await self.answer("sm:a", f"<a xmlns='{NS_SM}' h='{self.handled}'/>")
        elif what == "iq":
            reply = iq_answer(element)
            if reply is not None:
                await self.answer("iq " + ("result" if "result" in reply[:20] else "error"), reply)
        elif what == "presence":
            await self.on_presence(element)
        elif chat and element.get("id") in self.ledger.sent:
            self.ledger.received.setdefault(element.get("id"), now)

    async def on_presence(self, element: Element) -> None:
        sender = (element.get("from") or "").split("/")[0]
        if sender not in self.contacts:
            return
        presence_type = element.get("type")
        if presence_type == "subscribe":
            await self.answer("presence subscribed", f"<presence to={attr(sender)} type='subscribed'/>")
        elif presence_type is None and sender not in self.seen:
            self.seen.add(sender)
            if self.seen == self.contacts:
                self.all_seen.set()


# ---- the chatty contacts -------------------------------------------------------------------------

class Contact:
    def __init__(self, endpoint: Endpoint, name: str, seed: int, ledger: Ledger) -> None:
        self.client = Client(endpoint)
        self.name = name
        # one generator per task, so that each schedule is the same whatever the server's timing
        self.presence_rng = random.Random(f"{seed}/{name}/presence")
        self.message_rng = random.Random(f"{seed}/{name}/messages")
        self.ledger = ledger
        self.idle = f"{IDLE}@{DOMAIN}"
        self.sees_idle = trio.Event()
        self.presence_sent = 0

    async def connect(self) -> None:
        await self.client.connect()
        await self.client.login(self.name, PASSWORD, "desk")
        await self.client.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
        await self.client.send(f"<presence>{CAPS}</presence>")

    async def read(self) -> None:
        while True:
            element = await self.client.receive()
            what = kind(element)
            if what == "iq" and (reply := iq_answer(element)) is not None:
                await self.client.send(reply)
            elif what == "presence" and (element.get("from") or "").split("/")[0] == self.idle:
                if element.get("type") == "subscribe":
                    await self.client.send(f"<presence to='{self.idle}' type='subscribed'/>"
                                           f"<presence to='{self.idle}' type='subscribe'/>")
                elif element.get("type") is None:
                    self.sees_idle.set()

    async def chatter(self, end: float, interval: float) -> None:
        """Change show/status every `interval` seconds on average (±50 %), until `end`."""
        number, rng = 0, self.presence_rng
        await trio.sleep(rng.uniform(0, interval))
        while trio.current_time() < end:
            number += 1
            show = rng.choice(SHOWS)
            show_xml = f"<show>{show}</show>" if show else ""
            status = f"{rng.choice(STATUSES)} ({number})"
            await self.client.send(f"<presence>{show_xml}<status>{status}</status>{CAPS}</presence>")
            self.presence_sent += 1
            await trio.sleep(rng.uniform(0.5, 1.5) * interval)

    async def talk(self, end: float, interval: float) -> None:
        """A chat message to the idle client every `interval` seconds on average, until `end`."""
        number, rng = 0, self.message_rng
        await trio.sleep(rng.uniform(0, interval))
        while trio.current_time() < end:
            number += 1
            message_id = f"{self.name}-{number}"
            self.ledger.sent[message_id] = trio.current_time()
            await self.client.send(
                f"<message to='{self.idle}' type='chat' id='{message_id}'>"
                f"<body>Message {number} from {self.name}: are you still on board?</body>"
                "<active xmlns='http://jabber.org/protocol/chatstates'/>"
                "<request xmlns='urn:xmpp:receipts'/></message>")
            await trio.sleep(rng.uniform(0.5, 1.5) * interval)


# ---- one scenario against one server -------------------------------------------------------------

async def scenario(server: Server, settings: Settings, version: str, trace: Path | None = None) -> Result:
    ledger = Ledger()
    names = settings.contact_names()
    contacts = [Contact(server.endpoint, name, settings.seed, ledger) for name in names]  # same schedules everywhere
    phone = IdlePhone(server.endpoint, names, ledger)
    if trace is not None:
        phone.client.trace = []
    async with trio.open_nursery() as nursery:
        with trio.fail_after(120):
            await _connect_all(nursery, phone, contacts)
            await _subscribe_both_ways(phone, contacts)
        await trio.sleep(SETTLE)
        await phone.go_inactive()
        start = trio.current_time()
        end = start + settings.seconds
        plain_before = (phone.client.plain_received, phone.client.plain_sent)
        segments_before = _segments(phone)
        for index, contact in enumerate(contacts):
            nursery.start_soon(contact.chatter, end, settings.presence_interval)
            if index < settings.senders:
                nursery.start_soon(contact.talk, end - LAST_MESSAGE, settings.message_interval)
        await trio.sleep_until(end)
        phone.window = (start, end)
        segments_after = _segments(phone)
        plain = (phone.client.plain_received - plain_before[0], phone.client.plain_sent - plain_before[1])
        nursery.cancel_scope.cancel()
    for client in [phone.client, *(c.client for c in contacts)]:
        await client.aclose()
    if trace is not None:
        write_trace(trace, phone, start)
    result = summarise(server.name, version, settings, phone, contacts, ledger)
    result.rx_plain, result.tx_plain = plain
    if segments_before and segments_after:
        result.segments = (segments_after[0] - segments_before[0], segments_after[1] - segments_before[1])
    return result


async def _connect_all(nursery: trio.Nursery, phone: IdlePhone, contacts: list[Contact]) -> None:
    for contact in contacts:
        await contact.connect()
        nursery.start_soon(_reader, contact.read, contact.name)
    await phone.connect()
    nursery.start_soon(_reader, phone.read, IDLE)
    await phone.start_session()


async def _reader(read: Callable[[], object], who: str) -> None:
    try:
        await read()  # type: ignore[misc]
    except XmppError as exc:
        raise XmppError(f"{who}: {exc}") from None


async def _subscribe_both_ways(phone: IdlePhone, contacts: list[Contact]) -> None:
    await phone.subscribe_all()
    await phone.all_seen.wait()
    for contact in contacts:
        await contact.sees_idle.wait()


def write_trace(path: Path, phone: IdlePhone, start: float) -> None:
    """The idle client's decrypted traffic, one line per read (<) or write (>), seconds from the
    start of the measurement (negative: setup)."""
    assert phone.client.trace is not None
    with open(path, "w") as out:
        for t, direction, data in phone.client.trace:
            out.write(f"{t - start:9.3f} {direction} {data.decode(errors='replace')}\n")


def _segments(phone: IdlePhone) -> tuple[int, int] | None:
    sock = phone.client.tcp_socket()
    return tcp_counters(sock) if sock is not None else None


def summarise(name: str, version: str, settings: Settings, phone: IdlePhone, contacts: list[Contact],
              ledger: Ledger) -> Result:
    assert phone.window is not None
    start, end = phone.window
    result = Result(name, version, settings.seconds)
    events = phone.client.wire.window(start, end)
    result.rx_bytes = sum(size for _, direction, size in events if direction == RX)
    result.tx_bytes = sum(size for _, direction, size in events if direction == TX)
    result.writes = sum(1 for _, direction, _ in events if direction == TX)
    times = [t for t, _, _ in events]
    result.wakeups = bursts(times, WAKE_GAP)
    result.radio_wakeups = bursts(times, RADIO_TAIL)
    result.radio_seconds = radio_on(times, RADIO_TAIL, end)
    result.rx_bursts = bursts([t for t, direction, _ in events if direction == RX], WAKE_GAP)
    arrivals = [a for a in phone.arrivals if start <= a[0] <= end]
    result.idle_bursts = _bursts_without_chat(times, arrivals)
    for _, what, size, _ in arrivals:
        result.received[what] += 1
        result.received_xml[what] += size
    result.answered.update(what for t, what in phone.answers if start <= t <= end)
    result.presence_sent = sum(c.presence_sent for c in contacts)
    result.messages_sent = len(ledger.sent)
    in_time = {i: t for i, t in ledger.received.items() if t <= end}
    result.messages_received = len(in_time)
    result.latencies = [in_time[i] - ledger.sent[i] for i in in_time]
    if result.messages_received < result.messages_sent:
        result.problems.append(f"{result.messages_sent - result.messages_received} of {result.messages_sent} "
                               "chat messages did not reach the idle client within the window")
    return result


def _bursts_without_chat(times: list[float], arrivals: list[tuple[float, str, int, bool]]) -> int:
    """Wake-ups in which no chat message arrived: the ones the user got nothing from."""
    chats = sorted(t for t, _, _, chat in arrivals if chat)
    groups: list[tuple[float, float]] = []
    for t in sorted(times):
        if groups and t - groups[-1][1] <= WAKE_GAP:
            groups[-1] = (groups[-1][0], t)
        else:
            groups.append((t, t))
    # a message is parsed just after the read that brought it: allow the gap after a burst's last transfer
    return sum(1 for first, last in groups if not any(first <= c <= last + WAKE_GAP for c in chats))


# ---- the report ------------------------------------------------------------------------------------

def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def table(results: list[Result]) -> str:
    rows: list[tuple[str, Callable[[Result], float | None], int]] = [
        ("bytes received / hour", lambda r: r.per_hour(r.rx_bytes), 0),
        ("bytes sent / hour", lambda r: r.per_hour(r.tx_bytes), 0),
        (f"wake-ups / hour (gap {WAKE_GAP * 1000:.0f} ms)", lambda r: r.per_hour(r.wakeups), 0),
        ("  of which brought no chat message", lambda r: r.per_hour(r.idle_bursts), 0),
        (f"radio on, s / hour ({RADIO_TAIL:.0f} s tail)", lambda r: r.per_hour(r.radio_seconds), 0),
        ("client transmissions / hour", lambda r: r.per_hour(r.writes), 0),
        ("messages received", lambda r: r.messages_received, 0),
        ("median message latency (ms)", lambda r: r.median_latency_ms, 1),
    ]
    names = [r.server for r in results]
    head = f"{'':42}" + "".join(f"{n:>14}" for n in names)
    if len(results) == 2:
        head += f"{names[0] + ' / ' + names[1]:>24}"
    lines = [head]
    for label, get, digits in rows:
        values = [get(r) for r in results]
        line = f"{label:42}" + "".join(f"{_number(v, digits):>14}" for v in values)
        if len(results) == 2:
            line += f"{_ratio(values[0], values[1]):>24}"
        lines.append(line)
    return "\n".join(lines)


def raw(result: Result) -> str:
    lat = sorted(result.latencies)
    lines = [
        f"{result.server}: {result.version}; {result.seconds:.0f} s measured",
        f"  wire bytes (TLS records): received {result.rx_bytes:,}, sent {result.tx_bytes:,}; after TLS: "
        f"received {result.rx_plain:,}, sent {result.tx_plain:,} (TLS overhead received "
        f"{result.rx_bytes - result.rx_plain:,})",
        f"  wake-ups: {result.wakeups} (incoming bursts {result.rx_bursts}, without a chat message "
        f"{result.idle_bursts}), with a {RADIO_TAIL:.0f} s radio tail: {result.radio_wakeups}, radio on {result.radio_seconds:.1f} s; "
        f"client transmissions: {result.writes}",
        "  TCP segments out/in on loopback (pure ACKs included): "
        + (f"{result.segments[0]}/{result.segments[1]}" if result.segments else "unavailable"),
        "  received after TLS (count, bytes): " + ", ".join(
            f"{k} {n} ({result.received_xml[k]:,} B)" for k, n in result.received.most_common()),
        "  the idle client answered: " + (", ".join(f"{k} {n}" for k, n in result.answered.most_common()) or "nothing"),
        f"  contacts: {result.presence_sent} presence changes, {result.messages_sent} chat messages sent, "
        f"{result.messages_received} received in time",
        "  message latency ms: " + (f"min {lat[0] * 1000:.1f}, median {result.median_latency_ms:.1f}, "
                                    f"max {lat[-1] * 1000:.1f}" if lat else "none measured"),
    ]
    lines += [f"  PROBLEM: {p}" for p in result.problems]
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------------------------

def arguments(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="scripts/bench-idle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="measured seconds per server (default 120, max 3600)")
    parser.add_argument("--contacts", type=int, default=20, help="chatty contacts (default 20)")
    parser.add_argument("--senders", type=int, default=5, help="contacts that also send chat messages (default 5)")
    parser.add_argument("--presence-interval", type=float, default=6.0,
                        help="mean seconds between a contact's presence changes (default 6, ±50 %%)")
    parser.add_argument("--message-interval", type=float, default=60.0,
                        help="mean seconds between a sender's messages (default 60, ±50 %%)")
    parser.add_argument("--seed", type=int, default=1, help="random schedule, the same for both servers")
    parser.add_argument("--only", choices=("appliance", "prosody"), help="run against one server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    parser.add_argument("--trace", action="store_true",
                        help="write the idle client's decrypted traffic to SERVER/idle-trace.txt (implies --keep)")
    args = parser.parse_args(argv)
    if not 10 <= args.seconds <= 3600:
        parser.error("--seconds must be between 10 and 3600")
    if not 1 <= args.contacts <= 200 or not 0 <= args.senders <= args.contacts:
        parser.error("need 1 <= --contacts <= 200 and 0 <= --senders <= --contacts")
    args.keep = args.keep or args.trace
    settings = Settings(args.seconds, args.contacts, args.senders, args.presence_interval, args.message_interval,
                        args.seed)
    return settings, args


def run_one(name: str, workdir: Path, cert: Path, key: Path, settings: Settings, trace: bool) -> Result:
    accounts = {IDLE: PASSWORD, **{n: PASSWORD for n in settings.contact_names()}}
    (workdir / name).mkdir()
    if name == "appliance":
        server, version = servers.start_appliance(workdir / name, cert, key, accounts), servers.appliance_version()
    else:
        server, version = servers.start_prosody(workdir / name, cert, key, accounts), servers.prosody_version()
    print(f"{name}: {version}, pid {server.proc.pid}, port {server.endpoint.port}; measuring "
          f"{settings.seconds:.0f} s...", flush=True)
    try:
        return trio.run(scenario, server, settings, version, workdir / name / "idle-trace.txt" if trace else None)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    settings, args = arguments(argv)
    names = [args.only] if args.only else ["appliance", "prosody"]
    if "prosody" in names:
        try:
            servers.ensure_prosody()
        except SetupError as exc:
            print(f"bench-idle: {exc}", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    results: list[Result] = []
    try:
        cert, key = servers.make_certificate(workdir / "tls")
        for name in names:
            results.append(run_one(name, workdir, cert, key, settings, args.trace))
    except (SetupError, XmppError, trio.TooSlowError, ExceptionGroup) as exc:
        print(f"bench-idle: {_describe(exc)}\n(logs and configurations kept in {workdir})", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(results, settings))
    if args.keep:
        print(f"\nlogs, configurations{' and traces' if args.trace else ''} kept in {workdir}")
    return 0


def _describe(exc: BaseException) -> str:
    """One line per real cause, out of Trio's exception groups; a traceback for anything unexpected."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, (SetupError, XmppError)):
        return str(exc)
    if isinstance(exc, trio.TooSlowError):
        return "timed out while setting up the clients (logins or subscriptions)"
    return "".join(traceback.format_exception(exc))


def report(results: list[Result], settings: Settings) -> str:
    when = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    header = (f"Idle phone, CSI inactive, {settings.contacts} contacts changing presence every "
              f"~{settings.presence_interval:g} s, {settings.senders} of them sending a chat message every "
              f"~{settings.message_interval:g} s; STARTTLS (TLS 1.3) over loopback; {settings.seconds:.0f} s "
              f"per server; {when}; {platform.node()} ({platform.machine()}, {platform.system()} "
              f"{platform.release()})")
    return "\n\n".join([header, table(results), "Raw numbers:\n" + "\n".join(raw(r) for r in results)])


if __name__ == "__main__":
    sys.exit(main())
