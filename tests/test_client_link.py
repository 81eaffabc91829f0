"""The client runner over a real bad link (tests/netem.py): the link is cut (a blackhole: a phone in a
tunnel) for longer than heartbeat interval + timeout; the runner, in the namespace as a process
(tests/client_in_ns.py), notices the dead link through its heartbeat, backs off, and after the link
comes back resumes its XEP-0198 session: every message arrives, both ways, exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from appliance.client.state import ClientState
from appliance.client.stream import Account
from tests.harness import ServerProcess
from tests.netem import JsonLines, Link, bad_link

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT, HEARTBEAT_TIMEOUT = 3.0, 3.0


def start_client(server: ServerProcess, data: Path, name: str, link: Link | None) -> subprocess.Popen:
    """A runner process for `name` (in the namespace when `link` is given) with short heartbeats."""
    server.add_user(name)
    state = ClientState(data)
    state.save_account(Account(f"{name}@{server.domain}", "correct horse battery", server.host,
                               server.port, None))
    state.close()
    cmd = [sys.executable, "-m", "tests.client_in_ns", str(data), "--cafile", str(server.cert),
           "--heartbeat", str(HEARTBEAT), "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
           "--connect-timeout", "3"]
    options: dict[str, Any] = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    return link.run(cmd, **options) if link else subprocess.Popen(cmd, **options)


def send(proc: subprocess.Popen, to: str, body: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(f"send {to} {body}\n")
    proc.stdin.flush()


def received(lines: JsonLines, count: int, timeout: float) -> list[str]:
    """Wait until `count` messages have arrived in all; every body received so far."""
    deadline = time.monotonic() + timeout
    while len(bodies := [e["body"] for e in lines.seen if e["event"] == "received"]) < count:
        lines.next(max(0.01, deadline - time.monotonic()))
    return bodies


def statuses(lines: JsonLines) -> list[dict[str, Any]]:
    return [e for e in lines.seen if e["event"] == "status"]


def test_a_cut_link_is_noticed_by_the_heartbeat_and_the_session_resumes(tmp_path: Path) -> None:
    with bad_link(seed=1) as link:
        server = ServerProcess(tmp_path / "server", host=link.server_address).start()
        bob_proc: subprocess.Popen | None = None
        try:
            ann_proc = start_client(server, tmp_path / "ann", "ann", link)   # killed with the link
            bob_proc = start_client(server, tmp_path / "bob", "bob", None)   # on an unbroken link
            ann, bob = JsonLines(ann_proc), JsonLines(bob_proc)
            ann_jid, bob_jid = f"ann@{server.domain}", f"bob@{server.domain}"
            for lines in (ann, bob):
                while lines.wait_for("status", 15)["status"] != "online":
                    pass
            send(ann_proc, bob_jid, "ann-0")
            send(bob_proc, ann_jid, "bob-0")
            assert received(bob, 1, 10) == ["ann-0"] and received(ann, 1, 10) == ["bob-0"]

            link.cut()
            cut_at = time.monotonic()
            send(ann_proc, bob_jid, "ann-1")   # onto the dead link: never acknowledged
            send(bob_proc, ann_jid, "bob-1")   # the server writes it to ann's dead connection
            lost = ann.wait_for("status", 15)
            while lost["status"] != "waiting":
                lost = ann.wait_for("status", 15)
            assert "no answer from the server in 3 s" in lost["reason"]
            assert time.monotonic() - cut_at < HEARTBEAT + HEARTBEAT_TIMEOUT + 2
            time.sleep(max(0.0, cut_at + HEARTBEAT + HEARTBEAT_TIMEOUT + 3 - time.monotonic()))
            link.restore()

            back = ann.wait_for("status", 30)
            while back["status"] != "online":
                back = ann.wait_for("status", 30)
            assert back["resumed"] is True
            send(ann_proc, bob_jid, "ann-2")
            send(bob_proc, ann_jid, "bob-2")
            assert received(bob, 3, 15) == ["ann-0", "ann-1", "ann-2"]
            assert received(ann, 3, 15) == ["bob-0", "bob-1", "bob-2"]

            # Its back-off after the loss: an immediate attempt, then 1 s, 2 s, ... (± 20 %).
            waits = [s["delay"] for s in statuses(ann) if s["status"] == "waiting"]
            assert waits[0] == 0.0 and all(0.8 * 2 ** n <= d <= 1.2 * 2 ** n for n, d in enumerate(waits[1:]))
            for lines, proc in ((ann, ann_proc), (bob, bob_proc)):
                assert proc.stdin is not None
                proc.stdin.close()
                lines.rest(5)
            assert received(bob, 3, 0) == ["ann-0", "ann-1", "ann-2"]   # nothing more: no duplicate
            assert received(ann, 3, 0) == ["bob-0", "bob-1", "bob-2"]
        finally:
            if bob_proc is not None:
                bob_proc.kill()
                bob_proc.wait()
            server.stop()
