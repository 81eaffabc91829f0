"""The client runner over a real bad link (tests/netem.py). The runner under test, "ann", runs in the
namespace as a process (tests/client_in_ns.py); her peer "bob" runs the same client on the host, on an
unbroken link. The link is cut (a blackhole: a phone in a tunnel) for longer than heartbeat interval +
timeout: the runner notices the dead link through its heartbeat, backs off, and after the link comes
back resumes its XEP-0198 session (or, when the server lost it, logs in again and sends what was never
acknowledged): every message arrives, both ways, exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from appliance.client.state import ClientState
from appliance.client.stream import Account
from tests.harness import PASSWORD, ServerProcess
from tests.netem import JsonLines, Link, bad_link

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT, HEARTBEAT_TIMEOUT = 3.0, 3.0


@dataclass
class Side:
    jid: str
    proc: subprocess.Popen
    lines: JsonLines

    def send(self, to: Side, body: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"send {to.jid} {body}\n")
        self.proc.stdin.flush()

    def status(self, wanted: str, timeout: float) -> dict[str, Any]:
        """The next status change to `wanted`."""
        deadline = time.monotonic() + timeout
        while (event := self.lines.wait_for("status", max(0.01, deadline - time.monotonic())))["status"] != wanted:
            pass
        return event

    def received(self, count: int, timeout: float) -> list[str]:
        """Wait until `count` messages have arrived in all; every body received so far."""
        deadline = time.monotonic() + timeout
        while len(bodies := [e["body"] for e in self.lines.seen if e["event"] == "received"]) < count:
            self.lines.next(max(0.01, deadline - time.monotonic()))
        return bodies

    def waits(self) -> list[float]:
        return [e["delay"] for e in self.lines.seen if e["event"] == "status" and e["status"] == "waiting"]

    def finish(self) -> None:
        """Close its stdin (the process ends) and read everything it printed."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.lines.rest(5)


def start_client(server: ServerProcess, data: Path, name: str, link: Link | None) -> Side:
    """A runner process for `name` (in the namespace when `link` is given) with short heartbeats."""
    jid = server.add_user(name)
    state = ClientState(data)
    state.save_account(Account(jid, PASSWORD, server.host, server.port, None))
    state.close()
    cmd = [sys.executable, "-m", "tests.client_in_ns", str(data), "--cafile", str(server.cert),
           "--heartbeat", str(HEARTBEAT), "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
           "--connect-timeout", "3"]
    options: dict[str, Any] = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    proc = link.run(cmd, **options) if link else subprocess.Popen(cmd, **options)
    return Side(jid, proc, JsonLines(proc))


@contextmanager
def ann_and_bob(tmp_path: Path) -> Iterator[tuple[Link, ServerProcess, Side, Side]]:
    """Both online, and one message each way delivered."""
    with bad_link(seed=1) as link:
        server = ServerProcess(tmp_path / "server", host=link.server_address).start()
        bob: Side | None = None
        try:
            ann = start_client(server, tmp_path / "ann", "ann", link)   # killed with the link
            bob = start_client(server, tmp_path / "bob", "bob", None)
            ann.status("online", 15)
            bob.status("online", 15)
            ann.send(bob, "ann-0")
            bob.send(ann, "bob-0")
            assert bob.received(1, 10) == ["ann-0"] and ann.received(1, 10) == ["bob-0"]
            time.sleep(0.5)   # the acknowledgements come back (milliseconds here): nothing in flight
            yield link, server, ann, bob
        finally:
            if bob is not None:
                bob.proc.kill()
                bob.proc.wait()
            server.stop()


def cut_until_the_heartbeat_notices(link: Link, ann: Side) -> float:
    """Cut the link; returns when ann's heartbeat has given up on it (the time of the cut)."""
    link.cut()
    cut_at = time.monotonic()
    lost = ann.status("waiting", HEARTBEAT + HEARTBEAT_TIMEOUT + 5)
    assert f"no answer from the server in {HEARTBEAT_TIMEOUT:g} s" in lost["reason"]
    assert time.monotonic() - cut_at < HEARTBEAT + HEARTBEAT_TIMEOUT + 2
    return cut_at


def assert_backed_off(ann: Side) -> None:
    """After the loss: an immediate attempt, then 1 s, 2 s, ... (± 20 %), as docs/client.md says."""
    waits = ann.waits()
    assert len(waits) >= 2 and waits[0] == 0.0
    assert all(0.8 * 2 ** n <= d <= 1.2 * 2 ** n for n, d in enumerate(waits[1:])), waits


def test_a_cut_link_is_noticed_by_the_heartbeat_and_the_session_resumes(tmp_path: Path) -> None:
    with ann_and_bob(tmp_path) as (link, server, ann, bob):
        cut_at = cut_until_the_heartbeat_notices(link, ann)
        ann.send(bob, "ann-1")   # queued while the link is dead
        bob.send(ann, "bob-1")   # the server writes it to ann's dead connection
        time.sleep(max(0.0, cut_at + HEARTBEAT + HEARTBEAT_TIMEOUT + 3 - time.monotonic()))
        link.restore()

        assert ann.status("online", 30)["resumed"] is True
        ann.send(bob, "ann-2")
        bob.send(ann, "bob-2")
        assert bob.received(3, 15) == ["ann-0", "ann-1", "ann-2"]
        assert ann.received(3, 15) == ["bob-0", "bob-1", "bob-2"]
        assert_backed_off(ann)
        ann.finish()
        bob.finish()
        assert bob.received(3, 0) == ["ann-0", "ann-1", "ann-2"]   # nothing more: no duplicate
        assert ann.received(3, 0) == ["bob-0", "bob-1", "bob-2"]


def test_a_message_in_flight_is_sent_again_when_the_session_is_gone(tmp_path: Path) -> None:
    """Sent onto a link that is already dead (the runner does not know yet), never acknowledged; the
    server restarts during the cut, so there is no session to resume: after logging in again the
    runner sends it again."""
    with ann_and_bob(tmp_path) as (link, server, ann, bob):
        link.cut()
        ann.send(bob, "ann-1")
        time.sleep(0.5)          # written to the dead connection
        server.stop()
        server.start()
        bob.status("online", 15)
        ann.status("waiting", HEARTBEAT + HEARTBEAT_TIMEOUT + 5)
        link.restore()

        assert ann.status("online", 30)["resumed"] is False
        assert bob.received(2, 15) == ["ann-0", "ann-1"]
        ann.send(bob, "ann-2")
        assert bob.received(3, 15) == ["ann-0", "ann-1", "ann-2"]
        ann.finish()
        bob.finish()
        assert bob.received(3, 0) == ["ann-0", "ann-1", "ann-2"]
