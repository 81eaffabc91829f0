"""Helpers of the bad-link tests (tests/test_bad_link_*.py): a phone in its own network namespace
behind tests/netem.py's shaped link, a desk on the good side, both running tests/link_client.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness import PASSWORD, ServerProcess
from tests.netem import JsonLines, Link

LINK_CLIENT = str(Path(__file__).with_name("link_client.py"))
# A login over this link takes 9 round trips of up to 3.2 s plus loss recovery (14-25 s measured).
SERVER_SETTINGS = {"limits.handshake_timeout": 90}


def client_command(link: Link, server: ServerProcess, jid: str, peer: str, count: int,
                   interval: float, timeout: float) -> list[str]:
    return [sys.executable, LINK_CLIENT, link.server_address, str(server.port), jid, PASSWORD,
            str(server.cert), peer, str(count), "both", "--plugin", "xep_0198", "--reconnect",
            "--keepalive", "10", "--interval", str(interval), "--timeout", str(timeout)]


def received_from(events: list[dict[str, Any]], sender: str) -> list[int]:
    return [e["n"] for e in events if e["event"] == "received" and e["from"].startswith(sender)]


def collect(lines: JsonLines, timeout: float, into: list[dict[str, Any]]) -> threading.Thread:
    """Append the client's events to `into` as they come (the test watches them live), until it
    exits; past `timeout` it is killed."""
    def read() -> None:
        into.extend(lines.seen)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                into.append(lines.next(max(0.01, deadline - time.monotonic())))
            except (EOFError, TimeoutError):
                break
        if lines.proc.poll() is None:
            lines.proc.kill()
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def wait_for_event(events: list[dict[str, Any]], name: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not any(e["event"] == name for e in events):
        assert time.monotonic() < deadline, f"no {name!r} within {limit} s: {events[-5:]}"
        time.sleep(0.5)


def acked_by(events: list[dict[str, Any]]) -> set[int]:
    return {e["n"] for e in events if e["event"] == "acked"}


def wait_until(condition: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.5)


def server_beside(link: Link, data: Path) -> ServerProcess:
    """The appliance on the good side of the link. The phone's kernel gives up on a dead connection
    after ~14 s with these settings (940 s by default), so a 20 s cut outlasts TCP's own retries,
    as a tunnel does."""
    link.sysctl("net.ipv4.tcp_retries2", 3)
    link.sysctl("net.ipv4.tcp_syn_retries", 2)
    return ServerProcess(data, host=link.server_address, settings=SERVER_SETTINGS).start()


def phone_and_desk(link: Link, server: ServerProcess, count: int, interval: float, timeout: float):
    """The phone (in the namespace, behind the bad link) and a desktop on the good side."""
    phone, desk = server.add_user("phone"), server.add_user("desk")
    desk_proc = subprocess.Popen(client_command(link, server, desk, phone, count, interval, timeout),
                                 stdout=subprocess.PIPE, text=True)
    phone_proc = link.run(client_command(link, server, phone, desk, count, interval, timeout),
                          stdout=subprocess.PIPE, text=True)
    return (phone, JsonLines(phone_proc), phone_proc), (desk, JsonLines(desk_proc), desk_proc)
