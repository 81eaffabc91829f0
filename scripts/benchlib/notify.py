"""Notification benchmark: one notification through the HTTP API to N connected clients.

The appliance starts with its web server on a free loopback port; N phone-like sessions log in
(benchlib.load: STARTTLS, or plain with --plain; stream management, roster, presence) and answer
<r/> with <a/>. Then one `POST /api/v1/notifications` with `{"everyone": true}` is timed until the
last client has parsed the headline, and until the API's `GET` reports every recipient delivered
(stream-management acknowledged, which waits for the server's <r/>). The server process's CPU
time and memory from /proc, from just before the POST until the last client has it, and from then
until the last acknowledgement (benchlib.procstat).

Then, as every benchmark here does, the same clients log in to Debian's Prosody, started as
scripts/bench starts it (benchlib.servers) plus mod_announce, and one of them, an admin, sends an
XEP-0133 announcement (XEP-0050 execute, then the form submitted with subject and body): timed the
same way, the ratios appliance/Prosody printed. mod_announce delivers to online users only, with no
storage and no delivery tracking: an anchor, not the same workload. --no-prosody skips it.

Run: scripts/bench-notify [--clients 1000] [--plain] [--no-prosody] (scripts/bench-notify --help). Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable
from xml.sax.saxutils import escape

import trio

from benchlib import accounts, load, procstat, servers
from benchlib.load import Crowd, Meter, Session
from benchlib.servers import Server, SetupError
from benchlib.xmpp import NS_CLIENT, Element, XmppError, attr, local

TITLE = "Storm warning"
BODY = "Secure the boats."
ADMIN = "n00000"    # one of the clients; the Prosody admin who sends the announcement
ANNOUNCE = "http://jabber.org/protocol/admin#announce"
NS_COMMANDS = "http://jabber.org/protocol/commands"
ITERATIONS = 4096   # SCRAM iterations: logins are not what is measured here


@dataclass
class Arrivals:
    """When each client parsed the notification (trio clock)."""
    times: dict[str, float] = field(default_factory=dict)
    everyone: trio.Event = field(default_factory=trio.Event)
    expected: int = 0

    def on_stanza(self, session: Session, element: Element, now: float) -> None:
        if element.tag == f"{{{NS_CLIENT}}}message" and element.findtext(f"{{{NS_CLIENT}}}subject") == TITLE:
            self.times.setdefault(session.username, now)
            if len(self.times) >= self.expected:
                self.everyone.set()


def api_call(port: int, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request(method, path, json.dumps(body).encode() if body is not None else None, headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


async def all_delivered(port: int, key: str, notification_id: int, timeout: float) -> dict[str, Any]:
    """Poll the status until nothing is pending (or `timeout`); the last status."""
    with trio.move_on_after(timeout):
        while True:
            _, status = await trio.to_thread.run_sync(api_call, port, key, "GET",
                                                      f"/api/v1/notifications/{notification_id}")
            if status["pending"] == 0:
                return status
            await trio.sleep(0.25)   # each GET costs the server too: poll gently
    return status


Fire = Callable[[], Awaitable[Any]]


async def scenario(server: Server, users: list[str], tls: bool, timeout: float,
                   arm: Callable[[Crowd], Awaitable[Fire]],
                   then: Callable[[Any, float], Awaitable[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Log `users` in, `arm(crowd)` (untimed preparation; returns what sends the notification),
    then time the send until the last client has it, with the server's CPU and memory meanwhile;
    `then(sent, start)` measures what follows (the appliance's acknowledgements)."""
    arrivals = Arrivals(expected=len(users))
    figures: dict[str, Any] = {"rss_empty": procstat.sample(server.proc.pid).rss}
    async with trio.open_nursery() as nursery:
        crowd = Crowd(nursery)
        figures["login_seconds"] = await crowd.open(
            [Session(server.endpoint, u, tls, on_stanza=arrivals.on_stanza) for u in users])
        figures["sessions"] = len(crowd.sessions)
        figures["failures"] = crowd.failures[:5]
        fire = await arm(crowd)
        await trio.sleep(2)   # let the last logins' presence and roster work settle before measuring
        meter = Meter(server)
        await meter.start()
        assert meter.before is not None
        figures["rss_before"] = meter.before.rss
        start = trio.current_time()
        sent = await fire()
        figures["api_seconds"] = trio.current_time() - start
        with trio.move_on_after(timeout):
            await arrivals.everyone.wait()
        figures["received"] = len(arrivals.times)
        figures["last_received_seconds"] = max(arrivals.times.values(), default=start) - start
        ordered = sorted(t - start for t in arrivals.times.values())
        figures["median_received_seconds"] = ordered[len(ordered) // 2] if ordered else None
        figures["delivery"] = await meter.stop()
        if then is not None:
            figures.update(await then(sent, start))
        figures.update(crowd.dropped_figures())
        with trio.move_on_after(60):
            await crowd.close()
        nursery.cancel_scope.cancel()
    return figures


def appliance_post(http_port: int, key: str) -> Callable[[Crowd], Awaitable[Fire]]:
    async def arm(crowd: Crowd) -> Fire:
        async def post() -> dict[str, Any]:
            code, created = await trio.to_thread.run_sync(
                api_call, http_port, key, "POST", "/api/v1/notifications",
                {"title": TITLE, "body": BODY, "priority": "urgent", "to": {"everyone": True}})
            if code != 201:
                raise SetupError(f"POST /api/v1/notifications answered {code}: {created}")
            return created
        return post
    return arm


def appliance_acks(server: Server, http_port: int, key: str, timeout: float
                   ) -> Callable[[Any, float], Awaitable[dict[str, Any]]]:
    """Until the API reports every recipient delivered (stream-management acknowledged)."""
    async def acks(created: dict[str, Any], start: float) -> dict[str, Any]:
        # The server asks for acks (<r/>) after [stream_management] request_after stanzas or
        # request_seconds: "delivered" in the API follows that, not the arrival.
        meter = Meter(server)
        await meter.start()
        status = await all_delivered(http_port, key, created["id"], timeout)
        return {"all_acked_seconds": trio.current_time() - start, "recipients": status["recipients"],
                "delivered": status["delivered"], "pending": status["pending"], "acks": await meter.stop()}
    return acks


def command(node: str, body: str = "", **attrs: str) -> str:
    """An XEP-0050 request to the server; the IQ's id is its action."""
    extra = "".join(f" {k}={attr(v)}" for k, v in attrs.items())
    return (f"<iq type='set' id={attr(attrs.get('action', 'x'))} to={attr(servers.DOMAIN)}>"
            f"<command xmlns='{NS_COMMANDS}' node={attr(node)}{extra}>{body}</command></iq>")


async def prosody_announce(crowd: Crowd) -> Fire:
    """XEP-0133 announce through XEP-0050 by the admin session: `execute` (untimed) returns the
    form and a session id; the returned `fire` submits it with the subject and the body."""
    admin = next((s for s in crowd.sessions if s.username == ADMIN), None)
    if admin is None:
        raise SetupError(f"the admin session {ADMIN} did not log in to Prosody: {crowd.failures[:3]}")
    reply = await admin.iq("execute", command(ANNOUNCE, action="execute"))
    form = reply.find(f"{{{NS_COMMANDS}}}command")
    if reply.get("type") != "result" or form is None or not form.get("sessionid"):
        raise SetupError(f"Prosody refused {ANNOUNCE}: {reply.get('type')} {[local(c) for c in reply.iter()]}")
    fields = {"FORM_TYPE": "http://jabber.org/protocol/admin", "subject": TITLE, "announcement": BODY}
    submit = ("<x xmlns='jabber:x:data' type='submit'>"
              + "".join(f"<field var={attr(k)}><value>{escape(v)}</value></field>" for k, v in fields.items()) + "</x>")

    async def fire() -> None:
        done = await admin.iq("complete", command(ANNOUNCE, submit, sessionid=form.get("sessionid"),
                                                  action="complete"))
        if done.get("type") != "result":
            raise SetupError(f"Prosody's {ANNOUNCE} submit answered {done.get('type')}")
    return fire


def start(workdir: Path, cert: Path, key: Path, users: list[str], http_port: int, tls: bool) -> Server:
    data = workdir / "data"
    data.mkdir(parents=True)
    accounts.appliance_accounts(data, users, load.PASSWORD, ITERATIONS, {})
    settings: dict[str, Any] = {
        "scram_iterations": ITERATIONS, "limits": {"connections_per_address": len(users) + 100},
        "http": {"enabled": True, "port": http_port, "tls_port": 0}}
    if not tls:
        settings["require_tls"] = False
    server = servers.start_appliance(workdir, cert, key, {}, settings)
    servers.wait_for_port(http_port, server.proc, server.log)
    return server


def start_prosody(workdir: Path, cert: Path, key: Path, users: list[str], tls: bool) -> Server:
    """Prosody as scripts/bench runs it (benchlib.bench.Bench.start), plus mod_announce (which
    depends on mod_adhoc) and ADMIN in `admins`."""
    data = workdir / "data"
    data.mkdir(parents=True)
    accounts.prosody_accounts(data, users, load.PASSWORD, ITERATIONS, {})
    settings = {"default_iteration_count": ITERATIONS, "network_backend": "epoll", "c2s_require_encryption": tls,
                "admins": [f"{ADMIN}@{servers.DOMAIN}"]}
    return servers.start_prosody(workdir, cert, key, {}, settings, extra_modules=("adhoc", "announce"))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def per_client_mb(f: dict[str, Any]) -> float:
    """Memory the logged-in sessions added: RSS before the send minus RSS before the logins."""
    return (f["rss_before"] - f["rss_empty"]) / max(1, f["sessions"]) / 2**20


def appliance_report(figures: dict[str, Any], clients: int) -> list[str]:
    delivery, acks = figures["delivery"], figures["acks"]
    return [
        "Appliance:",
        f"  clients logged in: {figures['sessions']:,} in {figures['login_seconds']:.1f} s"
        + (f"; failures: {figures['failures']}" if figures["failures"] else ""),
        f"  POST answered (201) after:        {_ms(figures['api_seconds'])}",
        f"  received by half the clients:     {_ms(figures['median_received_seconds'])}",
        f"  received by the last client:      {_ms(figures['last_received_seconds'])} "
        f"({figures['received']:,} of {clients:,} received)",
        f"  server CPU until the last had it: {delivery['server_cpu_s'] * 1000:,.0f} ms "
        f"({delivery['server_cpu_s'] * 1000 / max(1, clients):.2f} ms per client, "
        f"{delivery['db_commits']} SQLite commits)",
        f"  all acknowledged (API delivered): {_ms(figures['all_acked_seconds'])} "
        f"({figures['delivered']:,} delivered, {figures['pending']:,} pending; the server asks for acks "
        "after [stream_management] request_seconds)",
        f"  server CPU from then to the acks: {acks['server_cpu_s'] * 1000:,.0f} ms "
        f"({acks['db_commits']} SQLite commits; includes the idle sessions' own cost meanwhile)",
        f"  server memory (RSS):              {figures['rss_empty'] / 2**20:.0f} MB before the logins, "
        f"{figures['rss_before'] / 2**20:.0f} MB before the POST, "
        f"{delivery['rss_bytes'] / 2**20:.0f} MB when the last had it, {acks['rss_bytes'] / 2**20:.0f} MB at the end",
        f"  load generator CPU share:         {delivery['client_cpu_share']:.0%} of a core; other processes "
        f"{delivery['other_cpu_share']:.0%} (while delivering)",
    ] + ([f"  dropped sessions: {figures['dropped_sessions']} e.g. {figures['dropped_examples']}"]
         if figures["dropped_sessions"] else [])


def prosody_report(figures: dict[str, Any], clients: int, version: str) -> list[str]:
    delivery = figures["delivery"]
    return [
        f"Prosody anchor ({version}, mod_announce: XEP-0133 announce by an admin session; online users "
        "only, no storage, no delivery tracking: an anchor, not the same workload):",
        f"  clients logged in: {figures['sessions']:,} in {figures['login_seconds']:.1f} s"
        + (f"; failures: {figures['failures']}" if figures["failures"] else ""),
        f"  ad-hoc submit answered after:     {_ms(figures['api_seconds'])}",
        f"  received by half the clients:     {_ms(figures['median_received_seconds'])}",
        f"  received by the last client:      {_ms(figures['last_received_seconds'])} "
        f"({figures['received']:,} of {clients:,} received)",
        f"  server CPU until the last had it: {delivery['server_cpu_s'] * 1000:,.0f} ms "
        f"({delivery['server_cpu_s'] * 1000 / max(1, clients):.2f} ms per client)",
        f"  server memory (RSS):              {figures['rss_empty'] / 2**20:.0f} MB before the logins, "
        f"{figures['rss_before'] / 2**20:.0f} MB before the submit, "
        f"{delivery['rss_bytes'] / 2**20:.0f} MB when the last had it",
        f"  load generator CPU share:         {delivery['client_cpu_share']:.0%} of a core; other processes "
        f"{delivery['other_cpu_share']:.0%} (while delivering)",
    ] + ([f"  dropped sessions: {figures['dropped_sessions']} e.g. {figures['dropped_examples']}"]
         if figures["dropped_sessions"] else [])


def ratio_table(a: dict[str, Any], p: dict[str, Any]) -> list[str]:
    rows = [("time to the last client (ms)", a["last_received_seconds"] * 1000, p["last_received_seconds"] * 1000),
            ("server CPU until then (ms)", a["delivery"]["server_cpu_s"] * 1000, p["delivery"]["server_cpu_s"] * 1000),
            ("memory per connected client (MB)", per_client_mb(a), per_client_mb(p))]
    lines = ["Appliance (notification API) against Prosody (mod_announce) in this run:",
             f"  {'':34}{'appliance':>11}{'Prosody':>11}{'ratio a/P':>11}"]
    for label, av, pv in rows:
        digits = 3 if av < 10 else 0
        ratio = f"{av / pv:.2f}" if pv > 0 else "-"
        lines.append(f"  {label:34}{av:>11,.{digits}f}{pv:>11,.{digits}f}{ratio:>11}")
    return lines


def report(results: dict[str, dict[str, Any]], clients: int, tls: bool, versions: dict[str, str]) -> str:
    when = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"One notification to {clients:,} connected clients ({'STARTTLS' if tls else 'plain TCP'}, loopback), "
             f"{versions['appliance']}; {when}; {platform.node()} ({platform.machine()}, "
             f"load {procstat.load_average()})", ""]
    if "prosody" in results:
        lines += ratio_table(results["appliance"], results["prosody"]) + [""]
    lines += appliance_report(results["appliance"], clients)
    if "prosody" in results:
        lines += [""] + prosody_report(results["prosody"], clients, versions["prosody"])
    return "\n".join(lines)


def run(workdir: Path, users: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The appliance, then (unless --no-prosody) Prosody, each stopped before the next starts."""
    tls = not args.plain
    cert, tls_key = servers.make_certificate(workdir / "tls")
    results: dict[str, dict[str, Any]] = {}
    http_port = servers.free_port()
    print(f"appliance: {len(users):,} clients...", flush=True)
    server = start(workdir / "appliance", cert, tls_key, users, http_port, tls)
    try:
        key = (workdir / "appliance" / "data" / "local-api.key").read_text().strip()  # written by serve at start
        results["appliance"] = trio.run(scenario, server, users, tls, args.timeout, appliance_post(http_port, key),
                                        appliance_acks(server, http_port, key, args.timeout))
    finally:
        server.stop()
    if args.no_prosody:
        return results
    print(f"prosody: {len(users):,} clients...", flush=True)
    server = start_prosody(workdir / "prosody", cert, tls_key, users, tls)
    try:
        results["prosody"] = trio.run(scenario, server, users, tls, args.timeout, prosody_announce)
    finally:
        server.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-notify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="connected clients (default 1000)")
    parser.add_argument("--plain", action="store_true", help="plain TCP instead of STARTTLS")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for delivery (default 120)")
    parser.add_argument("--no-prosody", action="store_true",
                        help="skip the Prosody anchor (mod_announce to the same clients)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configurations)")
    args = parser.parse_args(argv)
    if args.clients < 1:
        parser.error("--clients must be at least 1")
    if procstat.raise_open_files() < args.clients + 200:
        print("bench-notify: warning: the open files limit is below the number of clients", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    users = [f"n{n:05d}" for n in range(args.clients)]
    versions = {"appliance": servers.appliance_version()}
    try:
        if not args.no_prosody:
            servers.ensure_prosody()
            versions["prosody"] = servers.prosody_version()
        results = run(workdir, users, args)
    except (SetupError, XmppError, OSError, trio.TooSlowError) as exc:
        print(f"bench-notify: {exc or type(exc).__name__}\n(work directory kept: {workdir})", file=sys.stderr)
        return 1
    print(report(results, args.clients, not args.plain, versions))
    if args.keep:
        print(f"\nwork directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
