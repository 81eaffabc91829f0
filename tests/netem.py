"""A real bad link for tests: a client network namespace joined to the root namespace by a shaped link.

    with bad_link() as link:                      # skips the test unless root and namespaces work
        server = ServerProcess(tmp, host=link.server_address).start()   # listens on the link address
        client = link.run([sys.executable, "tests/link_client.py", ...], stdout=PIPE)  # in the namespace
        link.shape(delay_ms=800, jitter_ms=400, loss_pct=10)   # each direction, like netem on both ends
        link.cut(); time.sleep(30); link.restore()           # nothing passes; TCP retransmits meanwhile

Why not `tc netem` on a veth pair: the kernel here is built without it (CONFIG_NET_SCH_NETEM is not
set and CONFIG_MODULES is off, so it cannot be loaded: `tc qdisc add ... netem` answers "Specified
qdisc kind is unknown"). No other qdisc of this kernel can delay packets. So the link is a pair of TUN
devices - one in the root namespace (`server_address`), one moved into the client namespace
(`client_address`) - and a small userspace emulator (this file, run as `python tests/netem.py emulate`)
that carries every IP packet between them, with netem's semantics: per direction, a packet is lost
with probability loss_pct, else delivered after delay_ms + uniform(-jitter_ms, +jitter_ms) (so large
jitter reorders packets, as netem does), with a queue limit of 1000 packets per direction.
It runs the same on every Linux kernel with TUN and network namespaces, and a seed makes it repeatable.
The TUN devices are not persistent: they disappear when the emulator exits, which it does when its
stdin closes, so even a killed test process leaves no device behind; the namespace is deleted in
`finally`, and namespaces left by a dead test process (`appl-<dead pid>-<n>`) are removed on the next run.

Cutting the link (`cut()`): by default a blackhole - both interfaces stay up with their addresses and
routes, every packet in either direction (including those already in flight) is dropped. That is a phone
in a tunnel: established TCP connections on both sides keep retransmitting with exponential backoff and a
new connect() times out (SYN retries), nothing fails fast. `cut(mode="down")` sets the namespace's
interface down instead: the namespace loses its route, so the client's connect()/send() fail at once
with ENETUNREACH while the server side still sees a blackhole - a phone whose Wi-Fi went away.
In both modes established connections survive a restore() as long as the cut is shorter than the
kernel's retransmission limit, net.ipv4.tcp_retries2 (measured with blackhole cuts and data waiting to be
sent: the default 15 killed the connection after 940 s unshaped, 952 s under 800 ± 400 ms). The setting is
per namespace: `link.sysctl("net.ipv4.tcp_retries2", 5)` makes only the client side give up sooner
(measured 3 -> 7 s, 5 -> 13.5 s, 6 -> 27 s, 8 -> 107 s unshaped; 14 / 28 / 58 / 116 s under 800 ± 400 ms).
After a restore, TCP resends only when its backed-off retransmission timer fires: data sent at the start
of a 60 s cut arrived 46 s after the restore (a 300 s cut: 35 s), so a client that wants to be quick after a
cut reconnects rather than waiting for its old connection.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

PREFIX = "appl"                                   # namespace names: appl-<pid>-<n>
LINK_SPACE = ipaddress.ip_network("10.199.0.0/16")   # /30 blocks are picked from here
QUEUE_LIMIT = 1000                                # packets per direction, as netem's default limit
_counter = itertools.count()


def _ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def namespaces() -> list[str]:
    """Names of all network namespaces known to `ip netns`."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def interfaces() -> list[str]:
    """Names of the interfaces of the root namespace."""
    out = _ip("-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _reap_stale() -> None:
    """Delete namespaces this module made in processes that are gone (a test run killed with SIGKILL)."""
    for name in namespaces():
        m = re.fullmatch(rf"{PREFIX}-(\d+)-\d+", name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            _ip("netns", "del", name, check=False)
        except PermissionError:
            pass


def _pick_block(n: int) -> tuple[str, str]:
    """A /30 from LINK_SPACE that overlaps no address or route of the root namespace."""
    used = []
    for args in (("-o", "-4", "addr", "show"), ("-4", "route", "show", "table", "all")):
        for token in _ip(*args, check=False).stdout.split():
            try:
                used.append(ipaddress.ip_network(token, strict=False))
            except ValueError:
                pass
    blocks = LINK_SPACE.num_addresses // 4
    start = (os.getpid() * 64 + n) % blocks
    for i in range(blocks):
        block = ipaddress.ip_network(f"{LINK_SPACE.network_address + ((start + i) % blocks) * 4}/30")
        if not any(block.overlaps(u) for u in used):
            hosts = list(block.hosts())
            return str(hosts[0]), str(hosts[1])
    raise RuntimeError(f"no free /30 in {LINK_SPACE}")


@dataclass
class Link:
    """One client namespace and its link to the root namespace. Made by `bad_link()`."""

    namespace: str
    server_if: str          # root-namespace side (a TUN device)
    client_if: str          # namespace side
    server_address: str     # for the server's `listen`
    client_address: str
    _emulator: subprocess.Popen
    _processes: list[subprocess.Popen] = field(default_factory=list)
    _cut_mode: str | None = None
    _shape: tuple[float, float, float] = (0.0, 0.0, 0.0)

    # ---- processes in the namespace ----------------------------------------------------------

    def run(self, cmd: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start `cmd` inside the namespace (`ip netns exec` execs it: the Popen's pid is the command's).
        Still-running processes are killed when the link is torn down."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespace, *cmd], **popen_kwargs)
        self._processes.append(proc)
        return proc

    def check_output(self, cmd: list[str], timeout: float = 30.0, **kwargs: Any) -> str:
        """Run `cmd` in the namespace to completion (bounded) and return its stdout."""
        return subprocess.run(["ip", "netns", "exec", self.namespace, *cmd], capture_output=True, text=True,
                              timeout=timeout, check=True, **kwargs).stdout

    def sysctl(self, name: str, value: object) -> None:
        """Set a per-namespace sysctl in the client namespace (e.g. net.ipv4.tcp_retries2); the host's stay."""
        path = "/proc/sys/" + name.replace(".", "/")      # /proc/sys/net is the namespace's own
        self.check_output(["sh", "-c", 'echo "$1" > "$2"', "sh", str(value), path], timeout=10)

    # ---- the link ----------------------------------------------------------------------------

    def shape(self, delay_ms: float = 0, jitter_ms: float = 0, loss_pct: float = 0) -> None:
        """Delay (uniform ± jitter) and random loss, applied to each direction separately, so a round
        trip pays the delay twice: like `tc qdisc ... netem delay D J loss L` on both veth ends."""
        self._shape = (float(delay_ms), float(jitter_ms), float(loss_pct))
        self._control()

    def clear(self) -> None:
        """No delay, no loss (a cut stays cut: `restore()` ends that)."""
        self.shape(0, 0, 0)

    def cut(self, mode: str = "blackhole") -> None:
        """Nothing passes until `restore()`. "blackhole": every packet dropped, interfaces stay up (TCP
        retransmits, connect() times out). "down": also the namespace's interface down (its sends fail
        at once with ENETUNREACH; the server side still sees a blackhole)."""
        if mode not in ("blackhole", "down"):
            raise ValueError(mode)
        self._cut_mode = mode
        self._control()
        if mode == "down":
            _ip("-n", self.namespace, "link", "set", self.client_if, "down")

    def restore(self) -> None:
        """End a cut; the shaping set before it applies again."""
        if self._cut_mode == "down":
            _ip("-n", self.namespace, "link", "set", self.client_if, "up")   # address and route come back
        self._cut_mode = None
        self._control()

    def stats(self) -> dict[str, dict[str, int]]:
        """Packet counts per direction ("up": client to server, "down": server to client):
        passed, lost (random loss), cut (dropped by a cut), overflow (queue full), errors (write failed)."""
        return self._command("stats")

    # ---- emulator control --------------------------------------------------------------------

    def _control(self) -> None:
        delay, jitter, loss = self._shape
        self._command(f"set {delay} {jitter} {loss} {1 if self._cut_mode else 0}")

    def _command(self, line: str, timeout: float = 5.0) -> Any:
        assert self._emulator.stdin is not None and self._emulator.stdout is not None
        if self._emulator.poll() is not None:
            raise RuntimeError(f"link emulator exited with {self._emulator.returncode}")
        self._emulator.stdin.write(line + "\n")
        self._emulator.stdin.flush()
        return _read_reply(self._emulator, timeout)

    def _teardown(self) -> None:
        kill_all(self._processes)


def kill_all(processes: list[subprocess.Popen]) -> None:
    """Kill those still running and reap them (bounded): a test's processes in a namespace it tears down."""
    for proc in processes:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _read_reply(proc: subprocess.Popen, timeout: float) -> Any:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"link emulator did not answer within {timeout} s (exit code {proc.poll()})")
    return json.loads(line)


def _stop(proc: subprocess.Popen) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _skip(reason: str) -> None:
    import pytest
    pytest.skip(reason)


@contextmanager
def bad_link(*, seed: int | None = None) -> Iterator[Link]:
    """A fresh namespace and shaped link (unshaped at first); everything is removed on exit, also on
    KeyboardInterrupt or a failing test. Calls pytest.skip when not root or namespaces cannot be made."""
    if os.geteuid() != 0:
        _skip("needs root: a network namespace and TUN devices are created for the bad link")
    try:
        subprocess.run(["ip", "-V"], capture_output=True, timeout=10)
    except FileNotFoundError:
        _skip("needs the `ip` command (Debian package iproute2)")
    _reap_stale()
    pid, n = os.getpid(), next(_counter)
    namespace = f"{PREFIX}-{pid}-{n}"
    server_if, client_if = f"ap{pid}-{n}s", f"ap{pid}-{n}c"   # at most 15 characters
    emulator: subprocess.Popen | None = None
    link: Link | None = None
    created = False
    try:
        made = _ip("netns", "add", namespace, check=False)
        if made.returncode != 0:
            _skip(f"cannot create a network namespace (`ip netns add` said: {made.stderr.strip()})")
        created = True
        emulator = subprocess.Popen([sys.executable, os.path.abspath(__file__), "emulate", server_if, client_if,
                                     str(seed if seed is not None else "")],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                    start_new_session=True)   # Ctrl-C reaches the test, which stops it
        ready = _read_reply(emulator, 10.0)
        if "error" in ready:
            _skip(f"cannot create TUN devices for the link: {ready['error']}")
        server_address, client_address = _pick_block(n)
        _ip("link", "set", client_if, "netns", namespace)
        for ns, dev, local, peer in ((None, server_if, server_address, client_address),
                                     (namespace, client_if, client_address, server_address)):
            where = ["-n", ns] if ns else []
            _ip(*where, "link", "set", dev, "addrgenmode", "none")    # no IPv6 link-local chatter
            _ip(*where, "addr", "add", local, "peer", peer, "dev", dev)
            _ip(*where, "link", "set", dev, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        link = Link(namespace, server_if, client_if, server_address, client_address, emulator)
        yield link
    finally:
        if link is not None:
            link._teardown()
        if emulator is not None:
            _stop(emulator)                     # the TUN devices go with it
        if created:
            _ip("netns", "del", namespace, check=False)


def link_fixture() -> Iterator[Link]:
    """Body for a pytest fixture, in a test module: `link = pytest.fixture(name="link")(netem.link_fixture)`."""
    with bad_link() as link:
        yield link


class JsonLines:
    """The JSON lines a child process prints (e.g. tests/link_client.py), read by a thread so that waiting
    for them is bounded. Lines that are not JSON come as {"event": "noise", "line": ...}."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.queue.put(json.loads(line))
            except ValueError:
                self.queue.put({"event": "noise", "line": line.rstrip()})
        self.queue.put(None)

    def next(self, timeout: float) -> dict[str, Any]:
        """The next line; EOFError when the output ended, TimeoutError when none came in `timeout`."""
        if self.ended:
            raise EOFError(f"output ended (exit code {self.proc.poll()}) after {self.seen[-5:]}")
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"nothing within {timeout:.0f} s after {self.seen[-5:]}") from None
        if item is None:
            self.ended = True
            return self.next(0)
        self.seen.append(item)
        return item

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            item = self.next(max(0.01, deadline - time.monotonic()))
            if item.get("event") == event:
                return item

    def rest(self, timeout: float) -> list[dict[str, Any]]:
        """Everything until the process ends (killed after `timeout`)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        while True:
            try:
                self.next(5)
            except (EOFError, TimeoutError):
                return self.seen


# ---- the emulator process ----------------------------------------------------------------------

def _open_tun(name: str) -> int:
    import fcntl
    import struct
    TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def emulate(server_if: str, client_if: str, seed: str = "") -> None:
    """Carry IP packets between two TUN devices with delay, jitter, loss and cuts. Commands on stdin
    (one per line; each answered by one JSON line on stdout): `set DELAY_MS JITTER_MS LOSS_PCT CUT`,
    `seed N`, `stats`. Exits when stdin closes."""
    import heapq
    import random
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        server_fd, client_fd = _open_tun(server_if), _open_tun(client_if)
    except OSError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return
    rng = random.Random(int(seed) if seed else None)
    delay = jitter = loss = 0.0
    cut = False
    queue: list[tuple[float, int, int, bytes, str]] = []   # (due, seq, out fd, packet, direction)
    queued = {"up": 0, "down": 0}
    stats = {d: {"passed": 0, "lost": 0, "cut": 0, "overflow": 0, "errors": 0} for d in ("up", "down")}
    seq = itertools.count()
    print(json.dumps({"ready": True}), flush=True)
    pending = b""

    def deliver(fd: int, packet: bytes, direction: str) -> None:
        try:
            os.write(fd, packet)
            stats[direction]["passed"] += 1
        except OSError:        # interface down, or its queue full
            stats[direction]["errors"] += 1

    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        readable, _, _ = select.select([0, server_fd, client_fd], [], [], timeout)
        for fd in readable:
            if fd == 0:
                data = os.read(0, 4096)
                if not data:
                    return
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    words = line.decode().split()
                    if words and words[0] == "set":
                        delay, jitter, loss = (float(w) for w in words[1:4])
                        cut = words[4] == "1"
                        reply: Any = {"ok": True}
                    elif words and words[0] == "seed":
                        rng.seed(int(words[1]))
                        reply = {"ok": True}
                    elif words and words[0] == "stats":
                        reply = stats
                    else:
                        reply = {"error": f"unknown command {line!r}"}
                    print(json.dumps(reply), flush=True)
                continue
            out, direction = (client_fd, "down") if fd == server_fd else (server_fd, "up")
            while True:
                try:
                    packet = os.read(fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:       # the device went down
                    break
                counts = stats[direction]
                if cut:
                    counts["cut"] += 1
                elif loss and rng.random() * 100 < loss:
                    counts["lost"] += 1
                elif queued[direction] >= QUEUE_LIMIT:
                    counts["overflow"] += 1
                elif not delay and not jitter:
                    deliver(out, packet, direction)
                else:
                    wait = max(0.0, delay + rng.uniform(-jitter, jitter)) / 1000
                    heapq.heappush(queue, (time.monotonic() + wait, next(seq), out, packet, direction))
                    queued[direction] += 1
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, packet, direction = heapq.heappop(queue)
            queued[direction] -= 1
            if cut:
                stats[direction]["cut"] += 1
            else:
                deliver(out, packet, direction)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "emulate":
        emulate(*sys.argv[2:5])
    else:
        sys.exit("usage: netem.py emulate SERVER_IF CLIENT_IF [SEED]")
