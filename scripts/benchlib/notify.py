"""Notification benchmark: one notification through the HTTP API to N connected clients.

The appliance starts with its web server on a free loopback port; N phone-like sessions log in
(benchlib.load: STARTTLS, or plain with --plain; stream management, roster, presence) and answer
<r/> with <a/>. Then one `POST /api/v1/notifications` with `{"everyone": true}` is timed until the
last client has parsed the headline, and until the API's `GET` reports every recipient delivered
(stream-management acknowledged, which waits for the server's <r/>). The server process's CPU
time and memory from /proc, from just before the POST until the last client has it, and from then
until the last acknowledgement (benchlib.procstat).

Run: scripts/bench-notify [--clients 1000] [--plain] (scripts/bench-notify --help). Not a test.
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
from typing import Any

import trio

from benchlib import accounts, load, procstat, servers
from benchlib.load import Crowd, Meter, Session
from benchlib.servers import Server, SetupError
from benchlib.xmpp import NS_CLIENT, Element, XmppError

TITLE = "Storm warning"
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


async def scenario(server: Server, http_port: int, key: str, users: list[str], tls: bool,
                   timeout: float) -> dict[str, Any]:
    arrivals = Arrivals(expected=len(users))
    figures: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        crowd = Crowd(nursery)
        figures["login_seconds"] = await crowd.open(
            [Session(server.endpoint, u, tls, on_stanza=arrivals.on_stanza) for u in users])
        figures["sessions"] = len(crowd.sessions)
        figures["failures"] = crowd.failures[:5]
        await trio.sleep(2)   # let the last logins' presence and roster work settle before measuring
        meter = Meter(server)
        await meter.start()
        assert meter.before is not None
        figures["rss_before"] = meter.before.rss
        start = trio.current_time()
        code, created = await trio.to_thread.run_sync(
            api_call, http_port, key, "POST", "/api/v1/notifications",
            {"title": TITLE, "body": "Secure the boats.", "priority": "urgent", "to": {"everyone": True}})
        figures["api_seconds"] = trio.current_time() - start
        if code != 201:
            raise SetupError(f"POST /api/v1/notifications answered {code}: {created}")
        with trio.move_on_after(timeout):
            await arrivals.everyone.wait()
        figures["received"] = len(arrivals.times)
        figures["last_received_seconds"] = max(arrivals.times.values(), default=start) - start
        ordered = sorted(t - start for t in arrivals.times.values())
        figures["median_received_seconds"] = ordered[len(ordered) // 2] if ordered else None
        figures["delivery"] = await meter.stop()
        # The server asks for acks (<r/>) after [stream_management] request_after stanzas or
        # request_seconds: "delivered" in the API follows that, not the arrival.
        await meter.start()
        status = await all_delivered(http_port, key, created["id"], timeout)
        figures["all_acked_seconds"] = trio.current_time() - start
        figures.update(recipients=status["recipients"], delivered=status["delivered"], pending=status["pending"])
        figures["acks"] = await meter.stop()
        figures.update(crowd.dropped_figures())
        with trio.move_on_after(60):
            await crowd.close()
        nursery.cancel_scope.cancel()
    return figures


def start(workdir: Path, users: list[str], http_port: int, tls: bool) -> Server:
    cert, key = servers.make_certificate(workdir / "tls")
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


def report(figures: dict[str, Any], clients: int, tls: bool, version: str) -> str:
    when = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    delivery, acks = figures["delivery"], figures["acks"]
    ms = lambda seconds: "-" if seconds is None else f"{seconds * 1000:,.0f} ms"  # noqa: E731
    return "\n".join([
        f"One notification to {clients:,} connected clients ({'STARTTLS' if tls else 'plain TCP'}, loopback), "
        f"{version}; {when}; {platform.node()} ({platform.machine()}, load {procstat.load_average()})",
        f"  clients logged in: {figures['sessions']:,} in {figures['login_seconds']:.1f} s"
        + (f"; failures: {figures['failures']}" if figures["failures"] else ""),
        f"  POST answered (201) after:        {ms(figures['api_seconds'])}",
        f"  received by half the clients:     {ms(figures['median_received_seconds'])}",
        f"  received by the last client:      {ms(figures['last_received_seconds'])} "
        f"({figures['received']:,} of {clients:,} received)",
        f"  server CPU until the last had it: {delivery['server_cpu_s'] * 1000:,.0f} ms "
        f"({delivery['server_cpu_s'] * 1000 / max(1, clients):.2f} ms per client, "
        f"{delivery['db_commits']} SQLite commits)",
        f"  all acknowledged (API delivered): {ms(figures['all_acked_seconds'])} "
        f"({figures['delivered']:,} delivered, {figures['pending']:,} pending; the server asks for acks "
        "after [stream_management] request_seconds)",
        f"  server CPU from then to the acks: {acks['server_cpu_s'] * 1000:,.0f} ms "
        f"({acks['db_commits']} SQLite commits; includes the idle sessions' own cost meanwhile)",
        f"  server memory (RSS):              {figures['rss_before'] / 2**20:.0f} MB before, "
        f"{delivery['rss_bytes'] / 2**20:.0f} MB when the last had it, {acks['rss_bytes'] / 2**20:.0f} MB at the end",
        f"  load generator CPU share:         {delivery['client_cpu_share']:.0%} of a core; other processes "
        f"{delivery['other_cpu_share']:.0%} (while delivering)",
    ] + ([f"  dropped sessions: {figures['dropped_sessions']} e.g. {figures['dropped_examples']}"]
         if figures["dropped_sessions"] else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-notify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="connected clients (default 1000)")
    parser.add_argument("--plain", action="store_true", help="plain TCP instead of STARTTLS")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for delivery (default 120)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (log, configuration)")
    args = parser.parse_args(argv)
    if procstat.raise_open_files() < args.clients + 200:
        print("bench-notify: warning: the open files limit is below the number of clients", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    users = [f"n{n:05d}" for n in range(args.clients)]
    server: Server | None = None
    try:
        http_port = servers.free_port()
        server = start(workdir, users, http_port, not args.plain)
        key = (workdir / "data" / "local-api.key").read_text().strip()  # written by serve at start
        figures = trio.run(scenario, server, http_port, key, users, not args.plain, args.timeout)
    except (SetupError, XmppError, OSError) as exc:
        print(f"bench-notify: {exc}\n(work directory kept: {workdir})", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    print(report(figures, args.clients, not args.plain, servers.appliance_version()))
    if args.keep:
        print(f"\nwork directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
