"""Server benchmark: the appliance against Debian's Prosody in the same run, the same load on each in
turn, one table of ratios (appliance / Prosody) and the raw numbers. Not a test: no thresholds.

Scenarios (each on both servers, each on a freshly started server process):
  logins     full logins (STARTTLS, SCRAM-SHA-1, bind, roster, presence, close), N at a time
  idle       N idle phone sessions (SM with resume, roster, presence), plaintext and TLS: memory
  messages   P sender/receiver pairs, chat messages at a fixed total rate, archived and <no-store/>
  presence   one user with C contacts, all online, changing presence K times: fan-out cost
  growth     10 pairs of messages while the biggest TLS idle crowd is connected (both servers);
             10,000 idle TLS sessions (appliance only); the archive preloaded with a million
             messages (appliance only)

Server CPU, memory and disk writes come from /proc/PID of the server; the appliance's SQLite
commits from its SIGUSR1 `stats` line. Run: scripts/bench [--quick] (scripts/bench --help).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from benchlib import accounts, load, procstat, servers
from benchlib.servers import Server, SetupError

SCENARIOS = ("logins", "idle", "messages", "presence", "growth")
SETTLE_AFTER_START = 2.0     # seconds between a server's port opening and its start-up RSS


@dataclass
class Plan:
    scenarios: list[str]
    servers: list[str]
    logins: int = 300
    login_concurrency: int = 10
    idle_sizes: list[int] = field(default_factory=lambda: [1000, 5000])
    big_idle: int = 10000
    settle: float = 15.0
    pairs: list[int] = field(default_factory=lambda: [10, 100])
    rate: float = 200.0
    seconds: float = 30.0
    contacts: int = 1000
    updates: int = 20
    spacing: float = 1.0
    archive_rows: int = 1_000_000
    iterations: int = 10000
    prosody_storage: str = "internal"
    repeat: int = 1              # runs of each message scenario per server, alternating; medians reported
    sender_acks: int = 0         # message senders send <r/> after every this many messages (0: never)

    # account names: u* for logins and idle crowds, m* for message pairs, hub + f* for presence
    def idle_users(self) -> list[str]:
        wanted = max([*self.idle_sizes, self.big_idle if "growth" in self.scenarios else 0, 1])
        return [f"u{n:05d}" for n in range(1, wanted + 1)]

    def message_users(self) -> list[str]:
        return [f"m{n:04d}" for n in range(1, 2 * max([*self.pairs, 10]) + 1)]

    def contact_users(self) -> list[str]:
        return [f"f{n:05d}" for n in range(1, self.contacts + 1)]


@dataclass
class Phase:
    key: str                                 # e.g. "messages-10-archived"
    servers: list[str]
    run: Callable[[Server], Awaitable[dict[str, Any]]]
    plaintext: bool = False                  # servers configured to allow logins without TLS
    prepare: Callable[[str, Path], None] | None = None   # before the server starts: (server name, its dir)


# ---- the phases ----------------------------------------------------------------------------------------

def phases(plan: Plan) -> list[Phase]:
    both = plan.servers
    appliance_only = [s for s in both if s == "appliance"]
    idle_users, message_users = plan.idle_users(), plan.message_users()
    out: list[Phase] = []
    if "logins" in plan.scenarios:
        out.append(Phase("logins", both, lambda s: load.logins(s, plan.logins, plan.login_concurrency,
                                                               idle_users[:max(plan.logins, 1)])))
    if "messages" in plan.scenarios:
        for pairs in plan.pairs:
            for no_store in (False, True):
                out.append(Phase(f"messages-{pairs}-{'no-store' if no_store else 'archived'}", both,
                                 _messages(plan, pairs, no_store, message_users)))
    if "presence" in plan.scenarios:
        out.append(Phase(f"presence-{plan.contacts}", both, lambda s: load.presence(
            s, "hub", plan.contact_users(), plan.updates, plan.spacing)))
    if "idle" in plan.scenarios or "growth" in plan.scenarios:
        sizes = plan.idle_sizes if "idle" in plan.scenarios else plan.idle_sizes[-1:]
        for size in sizes:
            for tls in (False, True):
                if "idle" not in plan.scenarios and not tls:
                    continue
                # the growth figure: 10 pairs of messages while the biggest TLS crowd is connected
                then = _messages(plan, 10, False, message_users) \
                    if tls and size == plan.idle_sizes[-1] and "growth" in plan.scenarios else None
                out.append(Phase(f"idle-{size}-{'tls' if tls else 'plain'}", both, _idle(plan, size, tls, then),
                                 plaintext=not tls))
    if "growth" in plan.scenarios and appliance_only:
        if plan.big_idle:
            out.append(Phase(f"idle-{plan.big_idle}-tls", appliance_only, _idle(plan, plan.big_idle, True, None)))
        if plan.archive_rows:
            out.append(Phase(f"messages-10-archived-{_rows(plan.archive_rows)}-archive", appliance_only,
                             _messages(plan, 10, False, message_users),
                             prepare=lambda name, directory: _preload(plan, directory)))
    return out


def _messages(plan: Plan, pairs: int, no_store: bool, users: list[str]) -> Callable[..., Awaitable[dict[str, Any]]]:
    return lambda server: load.messages(server, pairs, plan.rate, plan.seconds, no_store, users,
                                        ack_every=plan.sender_acks)


def _idle(plan: Plan, size: int, tls: bool, then: Callable[[Server], Awaitable[dict[str, Any]]] | None
          ) -> Callable[[Server], Awaitable[dict[str, Any]]]:
    users = plan.idle_users()[:size]
    return lambda server: load.idle(server, users, tls, plan.settle, (lambda: then(server)) if then else None)


def _rows(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows // 1000}k"


def _preload(plan: Plan, directory: Path) -> None:
    started = time.monotonic()
    print(f"  preloading the appliance's archive with {plan.archive_rows:,} messages...", flush=True)
    accounts.appliance_archive(directory / "data", plan.message_users(), plan.archive_rows)
    print(f"  ...done in {time.monotonic() - started:.0f} s "
          f"({accounts.appliance_archive_rows(directory / 'data'):,} rows in the archive)", flush=True)


# ---- servers ---------------------------------------------------------------------------------------

@dataclass
class Bench:
    plan: Plan
    workdir: Path
    cert: Path
    key: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def prepare_accounts(self) -> None:
        """Every account and roster the scenarios need, in each server's own storage."""
        names = ["hub", *self.plan.idle_users(), *self.plan.message_users(), *self.plan.contact_users()]
        rosters = {"hub": [f"{c}@{servers.DOMAIN}" for c in self.plan.contact_users()],
                   **{c: [f"hub@{servers.DOMAIN}"] for c in self.plan.contact_users()}}
        for name in self.plan.servers:
            started = time.monotonic()
            data = self.workdir / name / "data"
            data.mkdir(parents=True)
            write = {"appliance": accounts.appliance_accounts, "prosody": accounts.prosody_accounts,
                     "prosody sql": accounts.prosody_sql_accounts}[
                f"{name} sql" if name == "prosody" and self.plan.prosody_storage == "sql" else name]
            write(data, names, load.PASSWORD, self.plan.iterations, rosters)
            print(f"{name}: {len(names):,} accounts and {len(rosters):,} rosters written in "
                  f"{time.monotonic() - started:.1f} s", flush=True)

    def start(self, name: str, plaintext: bool) -> Server:
        directory = self.workdir / name
        limit = 2 * max(len(self.plan.idle_users()), self.plan.contacts) + 100
        if name == "appliance":
            settings: dict[str, Any] = {"scram_iterations": self.plan.iterations,
                                        "limits": {"connections_per_address": limit}}
            if plaintext:
                settings["require_tls"] = False
            return servers.start_appliance(directory, self.cert, self.key, {}, settings)
        settings = {"default_iteration_count": self.plan.iterations, "network_backend": "epoll",
                    "c2s_require_encryption": not plaintext}
        if self.plan.prosody_storage == "sql":
            settings["storage"] = "sql"
            settings["sql"] = {"driver": "SQLite3", "database": accounts.PROSODY_SQL_DATABASE}
        return servers.start_prosody(directory, self.cert, self.key, {}, settings)

    def run_phase(self, phase: Phase) -> None:
        """Each server in turn; a message scenario `plan.repeat` times (appliance, Prosody,
        appliance, ...), reported as the median of every figure, the single runs kept beside it."""
        rounds = self.plan.repeat if phase.key in repeated_scenarios(self.plan) else 1
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in phase.servers}
        for round_ in range(rounds):
            for name in phase.servers:
                label = f" (run {round_ + 1} of {rounds})" if rounds > 1 else ""
                print(f"{phase.key}: {name}{label}...", flush=True)
                figures = self._run_once(phase, name)
                runs[name].append(figures)
                print(f"  {summary(phase.key, figures)}", flush=True)
        for name, figures_list in runs.items():
            figures = figures_list[0] if rounds == 1 else median_figures(figures_list)
            if rounds > 1:
                print(f"{phase.key}: {name}, median of {rounds}:\n  {summary(phase.key, figures)}", flush=True)
            self.results.setdefault(phase.key, {})[name] = figures
            if isinstance(figures.get("then"), dict):
                self.results.setdefault(f"messages-10-archived-with-{phase.key}", {})[name] = figures["then"]

    def _run_once(self, phase: Phase, name: str) -> dict[str, Any]:
        if phase.prepare is not None:
            phase.prepare(name, self.workdir / name)
        started = time.monotonic()
        server = self.start(name, phase.plaintext)
        try:
            time.sleep(SETTLE_AFTER_START)
            start_rss = procstat.sample(server.proc.pid).rss
            self.results.setdefault("startup", {}).setdefault(name, {"rss": start_rss})
            figures = _run(phase.run, server)
            figures["rss_at_start"] = start_rss
        except Exception as exc:   # noqa: BLE001 - any failure of one phase is reported; the run goes on
            figures = {"error": _describe(exc)}
            self.problems.append(f"{phase.key} on {name}: {figures['error']}")
        finally:
            alive = server.proc.poll() is None
            server.stop()
        if not alive:
            self.problems.append(f"{phase.key} on {name}: the server process had exited "
                                 f"(code {server.proc.returncode}); see {server.log}")
        figures["log_warnings"] = load.write_log_tail(server)
        figures["phase_seconds"] = time.monotonic() - started
        self.problems += [f"{phase.key} on {name}: {note}" for note in notes(figures)]
        return figures


def repeated_scenarios(plan: Plan) -> set[str]:
    """The scenarios --repeat applies to: the message runs, whose CPU figures vary most between runs."""
    return {f"messages-{pairs}-{kind}" for pairs in plan.pairs for kind in ("archived", "no-store")}


# Figures where the worst run is the answer: one run that lost a message has lost one.
_WORST = {"lost", "duplicates", "strays", "dropped_sessions", "late_sends", "max_send_lag_ms", "latency_max_ms"}


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every numeric figure as the median over the runs that have it (the worst for losses and
    the like); the rest from the first run; each run's CPU per message and p99 latency listed
    under `<name>_runs`."""
    merged = dict(runs[0])
    for key in {k for run in runs for k, v in run.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}:
        values = [run[key] for run in runs if isinstance(run.get(key), (int, float))]
        merged[key] = max(values) if key in _WORST else statistics.median(values)
        if key in ("cpu_ms_per_message", "latency_p99_ms"):
            merged[f"{key}_runs"] = values
    errors = [run["error"] for run in runs if "error" in run]
    if errors:
        merged["error"] = "; ".join(errors)
    merged["runs"] = len(runs)
    return merged


def _run(scenario: Callable[[Server], Awaitable[dict[str, Any]]], server: Server) -> dict[str, Any]:
    """trio.run, with a Ctrl-C that Trio delivered inside an exception group raised as itself."""
    try:
        return trio.run(scenario, server)
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise


def notes(figures: dict[str, Any]) -> list[str]:
    """What says a figure may not mean what it seems: a server that fell behind, a load generator
    that may have been the bottleneck, losses, failed logins."""
    out = []
    if figures.get("lost"):
        out.append(f"{figures['lost']} of {figures['sent']} messages LOST (not received after the drain)")
    if figures.get("duplicates"):
        out.append(f"{figures['duplicates']} duplicate messages")
    if figures.get("strays"):
        out.append(f"{figures['strays']} messages received that this run did not send (left from an earlier run?)")
    if figures.get("missing"):
        out.append(f"{figures['missing']} presence deliveries missing")
    if figures.get("failed"):
        out.append(f"{figures['failed']} logins failed, e.g. {(figures.get('failures') or ['?'])[0]}")
    if figures.get("dropped_sessions"):
        out.append(f"{figures['dropped_sessions']} sessions ended by the server or lost during the scenario, e.g. "
                   f"{figures['dropped_examples'][0]}")
    if figures.get("close_errors"):
        out.append(f"{figures['close_errors']} sessions ended badly after the client's </stream:stream>, e.g. "
                   f"{figures['close_error_examples'][0]}")
    if "sent" in figures and figures.get("drain_seconds", 0) > 1.0:
        out.append(f"did not keep up: {figures['backlog_at_end_of_sending']} messages outstanding when sending "
                   f"ended, {figures['drain_seconds']:.1f} s to drain")
    if figures.get("late_sends"):
        out.append(f"{figures['late_sends']} sends started more than 100 ms late (max {figures['max_send_lag_ms']:.0f} "
                   "ms): the offered load was not the planned one")
    if figures.get("server_cpu_share", 0) > 0.9:
        out.append(f"the server used {figures['server_cpu_share']:.0%} of a core: saturated")
    if figures.get("client_cpu_share", 0) > 0.8:
        out.append(f"the load generator used {figures['client_cpu_share']:.0%} of a core: it may have been the "
                   "bottleneck")
    if figures.get("other_cpu_share", 0) > 0.15:
        out.append(f"other processes on the machine used {figures['other_cpu_share']:.0%} of a core during the "
                   "measurement: its figures may be disturbed")
    if isinstance(figures.get("then"), dict):
        out += [f"(with the idle crowd) {note}" for note in notes(figures["then"])]
    return out


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, (load.XmppError, SetupError, OSError, TimeoutError)):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return "".join(traceback.format_exception(exc)).strip()


def summary(key: str, f: dict[str, Any]) -> str:
    """One progress line per phase and server."""
    if "error" in f:
        return f"ERROR {f['error']}"
    if key == "logins":
        return f"{f['logins']} logins, {f['cpu_ms_per_login']:.2f} ms CPU each, {f['failed']} failed"
    if key.startswith("idle"):
        text = (f"{f['sessions']} sessions in {f['login_seconds']:.1f} s, {_fmt(f['kb_per_session'], 1)} KB each, "
                f"RSS {f['rss_after'] / 2**20:.0f} MB, {f['failed']} failed")
        if isinstance(f.get("then"), dict):
            text += "; then " + summary("messages", f["then"])
        return text
    if key.startswith("messages"):
        return (f"{f['sent']} sent, {f['received']} received, lost {f['lost']}, "
                f"{_fmt(f['cpu_ms_per_message'], 3)} ms CPU each, p99 {_fmt(f['latency_p99_ms'], 1)} ms")
    if key.startswith("presence"):
        return (f"{f['delivered']} delivered, missing {f['missing']}, {_fmt(f['cpu_us_per_delivery'], 1)} us CPU each, "
                f"all contacts in {_fmt(f['all_contacts_p50_ms'], 1)} ms (median)")
    return ""


# ---- the report ------------------------------------------------------------------------------------

@dataclass
class Row:
    label: str
    phase: str
    figure: str | Callable[[dict[str, dict[str, Any]], str], float | None]   # a key of the phase's figures,
    #                                   or a function of (all results, server name)
    digits: int = 2
    target: str = ""                  # "ratio <= 0.5", "<= 512 MB": rows that correspond to targets
    scale: float = 1.0
    only: str | None = None           # "appliance": an absolute figure, no ratio


def rows(plan: Plan) -> list[Row]:
    out = [
        Row("CPU per login, ms", "logins", "cpu_ms_per_login", 2, "ratio <= 1"),
        Row(f"login time p50 ({plan.login_concurrency} at a time), ms", "logins", "login_p50_ms", 1),
        Row("logins per second", "logins", "logins_per_s", 1),
    ]
    out.append(Row("start-up RSS (idle server, accounts written), MB", "startup", "rss", 1, scale=1 / 2**20))
    for size in plan.idle_sizes:
        for mode in ("plain", "tls"):
            target = "ratio <= 1" if size == 5000 else ""
            out.append(Row(f"memory per idle session, {size:,} {mode.upper() if mode == 'tls' else mode}, KB",
                           f"idle-{size}-{mode}", "kb_per_session", 1, target))
    for size in plan.idle_sizes[-1:]:
        out.append(Row(f"RSS with {size:,} idle TLS sessions, MB", f"idle-{size}-tls", "rss_after", 0,
                       scale=1 / 2**20))
        out.append(Row(f"CPU while {size:,} TLS sessions idle, % of a core", f"idle-{size}-tls", "idle_cpu_share",
                       2, scale=100))
    for pairs in plan.pairs:
        for variant in ("archived", "no-store"):
            key = f"messages-{pairs}-{variant}"
            target = {"archived": "ratio <= 0.5", "no-store": "ratio <= 1"}[variant] if pairs == 10 else ""
            out += [
                Row(f"CPU per message, {pairs} pairs {variant}, ms", key, "cpu_ms_per_message", 3, target),
                Row(f"latency p50, {pairs} pairs {variant}, ms", key, "latency_p50_ms", 1),
                Row(f"latency p99, {pairs} pairs {variant}, ms", key, "latency_p99_ms", 1,
                    "ratio <= 1" if pairs == 10 and variant == "archived" else ""),
                Row(f"disk writes per message, {pairs} pairs {variant}, bytes", key, "write_bytes_per_message", 0),
                Row(f"messages lost, {pairs} pairs {variant}", key, "lost", 0),
            ]
    for pairs in plan.pairs:
        out += [
            Row(f"SQLite commits per message, {pairs} pairs archived", f"messages-{pairs}-archived",
                "commits_per_message", 3, "well below 1", only="appliance"),
            Row(f"SQLite write calls per message, {pairs} pairs archived", f"messages-{pairs}-archived",
                "writes_per_message", 3, only="appliance"),
        ]
    if "presence" in plan.scenarios:
        key = f"presence-{plan.contacts}"
        out += [
            Row(f"CPU per delivered presence ({plan.contacts:,} contacts), us", key, "cpu_us_per_delivery", 1),
            Row(f"time until all {plan.contacts:,} have an update, p50, ms", key, "all_contacts_p50_ms", 1),
            Row(f"time until all {plan.contacts:,} have an update, max, ms", key, "all_contacts_max_ms", 1),
        ]
    if "growth" in plan.scenarios:
        size = plan.idle_sizes[-1]
        key = f"messages-10-archived-with-idle-{size}-tls"
        out += [
            Row(f"CPU per message, 10 pairs archived, {size:,} idle TLS connected, ms", key, "cpu_ms_per_message", 3),
            Row(f"latency p99, 10 pairs archived, {size:,} idle TLS connected, ms", key, "latency_p99_ms", 1),
        ]
        if plan.big_idle:
            out.append(Row(f"RSS with {plan.big_idle:,} idle TLS sessions, MB",
                           f"idle-{plan.big_idle}-tls", "rss_after", 0, "<= 512 MB", 1 / 2**20, "appliance"))
        if plan.archive_rows:
            key = f"messages-10-archived-{_rows(plan.archive_rows)}-archive"
            out += [
                Row(f"CPU per message, 10 pairs archived, {_rows(plan.archive_rows)} archive, ms",
                    key, "cpu_ms_per_message", 3, only="appliance"),
                Row("  the same against the almost empty archive, ms", "messages-10-archived", "cpu_ms_per_message",
                    3, only="appliance"),
                Row(f"  {_rows(plan.archive_rows)} archive / almost empty archive", key,
                    lambda results, server: _quotient(value(results, Row("", key, "cpu_ms_per_message"), server),
                                                      value(results, Row("", "messages-10-archived",
                                                                         "cpu_ms_per_message"), server)),
                    2, only="appliance"),
                Row(f"latency p99, 10 pairs archived, {_rows(plan.archive_rows)} archive, ms",
                    key, "latency_p99_ms", 1, only="appliance"),
            ]
    return out


def value(results: dict[str, dict[str, Any]], row: Row, server: str) -> float | None:
    if callable(row.figure):
        return row.figure(results, server)
    figures = results.get(row.phase, {}).get(server)
    if not figures or row.figure not in figures or figures[row.figure] is None:
        return None
    return figures[row.figure] * row.scale


def _quotient(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def ratio_table(plan: Plan, results: dict[str, dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    table = rows(plan)
    width = max(len(row.label) for row in table) + 2
    lines = [f"  {'':{width}}{'appliance':>11}{'Prosody':>11}{'ratio a/P':>11}  target"]
    machine_rows = []
    for row in table:
        a, p = value(results, row, "appliance"), value(results, row, "prosody")
        ratio = _quotient(a, p) if row.only is None else None
        mark = "*" if row.target else " "
        lines.append(f"{mark} {row.label:{width}}{_fmt(a, row.digits):>11}"
                     f"{('n/a' if row.only else _fmt(p, row.digits)):>11}{_fmt(ratio, 2):>11}  {row.target}".rstrip())
        machine_rows.append({"label": row.label, "appliance": a, "prosody": None if row.only else p,
                             "ratio": ratio, "target": row.target or None})
    lines.append("* a row that corresponds to a target; the benchmark reports, it does not judge. "
                 "n/a: appliance only.")
    return "\n".join(lines), machine_rows


def raw_numbers(results: dict[str, dict[str, Any]]) -> str:
    out = []
    for key, by_server in results.items():
        out.append(f"{key}:")
        for name, figures in by_server.items():
            parts = []
            for k, v in figures.items():
                if k in ("then", "log_warnings", "failures", "close_error_examples", "dropped_examples") or v is None:
                    continue
                if isinstance(v, float):
                    v = f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
                elif isinstance(v, int) and not isinstance(v, bool):
                    v = f"{v:,}"
                elif isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
                    v = "/".join(f"{x:.4g}" for x in v)
                parts.append(f"{k}={v}")
            out.append(f"  {name}: " + ", ".join(parts))
            for what in ("failures", "log_warnings"):
                for line in figures.get(what) or []:
                    out.append(f"    {what[:-1].replace('_', ' ')}: {line[:300]}")
    return "\n".join(out)


def header(plan: Plan, versions: dict[str, str], started: dt.datetime, elapsed: float, loads: list[str]) -> str:
    m = procstat.machine()
    lines = [
        f"Server benchmark (scripts/bench), {started.strftime('%Y-%m-%d %H:%M %Z')}, {elapsed / 60:.1f} min",
        f"machine: {m['cpu']}, {m['ram']} RAM, {m['kernel']}, {m['os']}, open files {m['open files limit']}; "
        f"load average {loads[0]} before, {loads[-1]} after",
    ]
    if "appliance" in versions:
        lines.append(f"appliance: {versions['appliance']}; Python {m['python']}; SQLite synchronous=FULL (its default)")
    if "prosody" in versions:
        storage = {"internal": "internal (files, its default)", "sql": "sql (SQLite through LuaDBI)"}
        lines.append(f"Prosody: {versions['prosody']}; storage {storage[plan.prosody_storage]}; "
                     "network_backend epoll; its module defaults")
    lines += [
        f"both: domain {servers.DOMAIN}, loopback, one self-signed certificate, SCRAM-SHA-1 with "
        f"{plan.iterations} iterations, log level info, each scenario on a freshly started server; "
        "the load generator is one Trio process (its CPU is not counted)",
        f"load: logins {plan.logins} ({plan.login_concurrency} at a time); idle {', '.join(map(str, plan.idle_sizes))} "
        f"sessions settled {plan.settle:g} s; messages {plan.rate:g}/s in all for {plan.seconds:g} s "
        f"({', '.join(map(str, plan.pairs))} pairs"
        + (f"; senders ask for an ack (<r/>) after every {plan.sender_acks} messages" if plan.sender_acks
           else "; senders never ask for acks")
        + (f"; each run {plan.repeat} times per server, alternating, medians reported" if plan.repeat > 1 else "")
        + f"); presence {plan.contacts} contacts x {plan.updates} updates "
        f"every {plan.spacing:g} s" + (f"; growth: {plan.big_idle} idle TLS and a {plan.archive_rows:,}-message "
                                        "archive, appliance only" if "growth" in plan.scenarios else ""),
    ]
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------------

QUICK = dict(logins=60, idle_sizes=[500], big_idle=1000, settle=3.0, pairs=[10, 100], seconds=5.0,
             contacts=200, updates=5, spacing=0.5, archive_rows=100_000)


def arguments(argv: list[str] | None = None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, about 3 minutes: a smoke run (explicit size options still apply)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)")
    parser.add_argument("--only", choices=("appliance", "prosody"), help="run against one server")
    parser.add_argument("--logins", type=int, help="logins (default 300; quick 60)")
    parser.add_argument("--login-concurrency", type=int, help="logins at a time (default 10)")
    parser.add_argument("--idle-sizes", help="idle crowd sizes, comma-separated (default 1000,5000; quick 1000)")
    parser.add_argument("--big-idle", type=int, help="idle TLS sessions on the appliance alone in 'growth' "
                                                     "(default 10000; quick 2000; 0 skips)")
    parser.add_argument("--settle", type=float, help="seconds idle sessions sit before RSS is read (default 15)")
    parser.add_argument("--pairs", help="message pairs, comma-separated (default 10,100)")
    parser.add_argument("--rate", type=float, help="messages per second in all, the same for every run (default 200)")
    parser.add_argument("--seconds", type=float, help="seconds of sending per message run (default 30; quick 6)")
    parser.add_argument("--contacts", type=int, help="the presence hub's contacts (default 1000; quick 200)")
    parser.add_argument("--updates", type=int, help="presence changes by the hub (default 20; quick 5)")
    parser.add_argument("--spacing", type=float, help="seconds between presence changes (default 1)")
    parser.add_argument("--archive-rows", type=int, help="preloaded archive for 'growth' (default 1000000; "
                                                         "quick 100000; 0 skips)")
    parser.add_argument("--iterations", type=int, help="SCRAM iterations on both servers (default 10000)")
    parser.add_argument("--prosody-storage", choices=("internal", "sql"), default="internal",
                        help="Prosody's storage: internal (files, its default) or sql (SQLite through "
                             "LuaDBI; installs lua-dbi-sqlite3 when missing)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each message scenario this many times per server, alternating, and report "
                             "medians (default 1): CPU per message varies by 10-20 %% between single runs")
    parser.add_argument("--sender-acks", type=int, default=0,
                        help="message senders send <r/> after every N messages, as phones do after each "
                             "(default 0: never); an acknowledgement waits for the commit")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (data, configs, logs)")
    args = parser.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    plan = Plan(scenarios, [args.only] if args.only else ["appliance", "prosody"])
    if args.quick:
        for k, v in QUICK.items():
            setattr(plan, k, v)
    for k in ("logins", "login_concurrency", "big_idle", "settle", "rate", "seconds", "contacts", "updates",
              "spacing", "archive_rows", "iterations"):
        if getattr(args, k) is not None:
            setattr(plan, k, getattr(args, k))
    if args.idle_sizes:
        plan.idle_sizes = [int(x) for x in args.idle_sizes.split(",")]
    if args.pairs:
        plan.pairs = [int(x) for x in args.pairs.split(",")]
    plan.prosody_storage = args.prosody_storage
    plan.repeat = args.repeat
    plan.sender_acks = args.sender_acks
    if plan.sender_acks < 0:
        parser.error("--sender-acks must be 0 (never) or more")
    if plan.repeat < 1:
        parser.error("--repeat must be at least 1")
    if plan.rate <= 0 or plan.seconds <= 0 or not plan.idle_sizes or not plan.pairs:
        parser.error("need a positive --rate and --seconds, and at least one idle size and one pair count")
    return plan, args


def main(argv: list[str] | None = None) -> int:
    plan, args = arguments(argv)
    # Ctrl-C, and SIGTERM too, end the run through the `finally` that stops the servers by PID (a
    # shell starting us in the background may have left SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started, clock = dt.datetime.now().astimezone(), time.monotonic()
    loads = [procstat.load_average()]
    limit = procstat.raise_open_files()
    needed = max(len(plan.idle_users()), plan.contacts) + 200   # per process: the client, each server
    if limit < needed:
        print(f"bench: warning: open files limit {limit} < {needed} needed for the largest crowd "
              "(each of the client and the server holds one socket per session)", file=sys.stderr)
    try:
        if "prosody" in plan.servers:
            servers.ensure_prosody()
            if plan.prosody_storage == "sql":
                servers.ensure_prosody_sql()
    except SetupError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    bench: Bench | None = None
    versions: dict[str, str] = {}
    try:
        cert, key = servers.make_certificate(workdir / "tls")
        if "appliance" in plan.servers:
            versions["appliance"] = servers.appliance_version()
        if "prosody" in plan.servers:
            versions["prosody"] = servers.prosody_version(details=True)
        bench = Bench(plan, workdir, cert, key)
        bench.prepare_accounts()
        for phase in phases(plan):
            bench.run_phase(phase)
    except KeyboardInterrupt:
        print(f"\nbench: interrupted (servers stopped; work directory {workdir})", file=sys.stderr)
        args.keep = True
        return 130
    except SetupError as exc:
        print(f"bench: {exc}\n(work directory kept: {workdir})", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        if bench is not None and any("error" in f for by in bench.results.values() for f in by.values()):
            args.keep = True   # the servers' logs say what went wrong
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - clock
    loads.append(procstat.load_average())
    table, table_rows = ratio_table(plan, bench.results)
    text = "\n\n".join([header(plan, versions, started, elapsed, loads), table, "Raw numbers (per scenario):\n"
                        + raw_numbers(bench.results)])
    if bench.problems:
        text += "\n\nProblems:\n" + "\n".join(f"  {p}" for p in bench.problems)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({
            "started": started.isoformat(), "seconds": elapsed, "machine": procstat.machine(), "load_average": loads,
            "versions": versions, "plan": asdict(plan), "table": table_rows, "results": bench.results,
            "problems": bench.problems}, indent=1, default=str))
    if args.keep:
        print(f"\nwork directory kept: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
