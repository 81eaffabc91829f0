"""Stream management over a real bad link (tests/netem.py): a phone in its own network namespace,
800 ms ± 400 ms each way, 10 % loss, and a link that goes dead several times for longer than TCP
keeps trying. Every message arrives exactly once, in order per sender; after a SIGKILL of the
server in the middle of a run, nothing the server had acknowledged is lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness import PASSWORD, ServerProcess
from tests.netem import JsonLines, Link, bad_link

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


def phone_and_desk(link: Link, server: ServerProcess, count: int, interval: float, timeout: float):
    """The phone (in the namespace, behind the bad link) and a desktop on the good side."""
    phone, desk = server.add_user("phone"), server.add_user("desk")
    desk_proc = subprocess.Popen(client_command(link, server, desk, phone, count, interval, timeout),
                                 stdout=subprocess.PIPE, text=True)
    phone_proc = link.run(client_command(link, server, phone, desk, count, interval, timeout),
                          stdout=subprocess.PIPE, text=True)
    return (phone, JsonLines(phone_proc), phone_proc), (desk, JsonLines(desk_proc), desk_proc)


def test_flapping_bad_link_every_message_exactly_once_in_order(tmp_path: Path) -> None:
    count, cuts, cut_seconds = 150, 3, 20
    with bad_link(seed=7) as link:
        # The phone's kernel gives up on a dead connection after ~14 s with these settings (940 s by
        # default), so each 20 s cut outlasts TCP's own retries, as a tunnel does.
        link.sysctl("net.ipv4.tcp_retries2", 3)
        link.sysctl("net.ipv4.tcp_syn_retries", 2)
        server = ServerProcess(tmp_path / "appliance", host=link.server_address, settings=SERVER_SETTINGS)
        server.start()
        phone_events: list[dict[str, Any]] = []
        desk_events: list[dict[str, Any]] = []
        try:
            link.shape(800, 400, 10)
            (phone, phone_lines, _), (desk, desk_lines, desk_proc) = phone_and_desk(
                link, server, count, interval=0.4, timeout=420)
            phone_lines.wait_for("online", 90)
            readers = [collect(phone_lines, 430, phone_events), collect(desk_lines, 430, desk_events)]
            for _ in range(cuts):
                time.sleep(15)
                link.cut()
                time.sleep(cut_seconds)
                link.restore()
            for reader in readers:
                reader.join(440)
        finally:
            if desk_proc.poll() is None:
                desk_proc.kill()
            server.stop()
            stats = link.stats()
    print(f"link: {stats}; phone reconnects: {sum(e['event'] == 'disconnected' for e in phone_events)}, "
          f"resumed: {sum(e['event'] == 'resumed' for e in phone_events)}")
    story = "\n".join(f"phone {e}" for e in phone_events if e["event"] not in ("sent", "received", "acked"))
    assert received_from(phone_events, desk) == list(range(count)), story
    assert received_from(desk_events, phone) == list(range(count)), story
    assert sum(e["event"] == "resumed" for e in phone_events) >= 1  # the cuts really broke the stream
    assert stats["up"]["cut"] + stats["down"]["cut"] > 0


def test_sigkill_mid_run_loses_nothing_the_server_acknowledged(tmp_path: Path) -> None:
    count = 60
    with bad_link(seed=11) as link:
        link.sysctl("net.ipv4.tcp_retries2", 3)
        link.sysctl("net.ipv4.tcp_syn_retries", 2)
        server = ServerProcess(tmp_path / "appliance", host=link.server_address, settings=SERVER_SETTINGS)
        server.start()
        phone_events: list[dict[str, Any]] = []
        desk_events: list[dict[str, Any]] = []
        try:
            link.shape(800, 400, 10)
            (phone, phone_lines, phone_proc), (desk, desk_lines, desk_proc) = phone_and_desk(
                link, server, count, interval=1.0, timeout=300)
            phone_lines.wait_for("online", 90)
            readers = [collect(phone_lines, 310, phone_events), collect(desk_lines, 310, desk_events)]
            time.sleep(25)
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
            server.start()  # same data, same ports: the clients reconnect by themselves
            # After the crash neither client can resume, and slixmpp forgets what it had not had
            # acknowledged, so neither will see all `count` messages: wait until both senders have
            # everything acknowledged, then until deliveries settle.
            wait_for_event(phone_events, "flushed", 240)
            wait_for_event(desk_events, "flushed", 240)
            # Then until what was acknowledged has arrived, bounded: over this link a retransmission
            # can take tens of seconds after TCP's backoff, so no fixed quiet period is long enough.
            arrived = lambda: all(acked_by(s) <= set(received_from(r, n)) for s, r, n in (
                (phone_events, desk_events, phone), (desk_events, phone_events, desk)))
            wait_until(arrived, limit=120)
        finally:
            for proc in (desk_proc, phone_proc):
                if proc.poll() is None:
                    proc.kill()
            for reader in readers:
                reader.join(10)
            server.stop()
    for sender_events, receiver_events, sender in ((phone_events, desk_events, phone),
                                                    (desk_events, phone_events, desk)):
        acked = acked_by(sender_events)
        got = set(received_from(receiver_events, sender))
        assert acked, sender_events[-5:]
        assert acked <= got, sorted(acked - got)  # what the server acknowledged arrived
