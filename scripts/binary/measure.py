#!/usr/bin/env python3
"""Start-up time and idle memory of a frozen `appliance`, for build-report.txt.

Start-up: `serve` on free loopback ports with a fresh data directory, timed until a TCP connection
to the c2s port answers the stream header we send with the server's own stream header (the first
accepted XMPP connection; it includes making the self-signed certificate, as a first boot does).
Idle RSS: VmRSS from /proc of the process and its children (a onefile's bootloader is the parent
of the Python process), read a few seconds after start-up. With --chroot the binary runs inside that
Debian tree through scripts/lib/foreign-chroot.sh (the arm64 tree under qemu-user): the time is
emulated and RSS would be qemu's, so only the time is given.

python3 measure.py [--runs 3] [--chroot TREE] BINARY   (BINARY is a path inside TREE with --chroot)
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # scripts/: benchlib (stdlib only here)
from benchlib import procstat  # noqa: E402

FOREIGN_CHROOT = Path(__file__).resolve().parents[1] / "lib" / "foreign-chroot.sh"
DOMAIN = "binary.test"
STREAM_HEADER = (f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams'>").encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(data: Path, data_seen: str, port: int) -> None:
    data.mkdir(parents=True)
    (data / "appliance.toml").write_text(
        f'domain = "{DOMAIN}"\ndata_dir = "{data_seen}"\nlisten = ["127.0.0.1"]\n'
        f"c2s_port = {port}\nc2s_tls_port = {free_port()}\n"
        "[components]\nport = 0\n[http]\nenabled = false\n[mdns]\nenabled = false\n")


def answers_stream(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(STREAM_HEADER)
            received = b""
            while b"<stream:stream" not in received:
                chunk = conn.recv(4096)
                if not chunk:
                    return False
                received += chunk
            return True
    except OSError:
        return False


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` and its descendants (a onefile's bootloader and its Python process)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return procstat.sample(pid).rss // 1024 + sum(rss_kib(int(child)) for child in children)


def one_start(command: list[str], data: Path, data_seen: str, idle_after: float | None) -> tuple[float, int | None]:
    """Seconds from exec to the first answered stream header, and the idle RSS in KiB if asked."""
    port = free_port()
    write_config(data, data_seen, port)
    started = time.monotonic()
    proc = subprocess.Popen([*command, "serve", "--config", f"{data_seen}/appliance.toml"],
                            stdout=subprocess.DEVNULL, stderr=open(data / "server.log", "wb"))
    try:
        while not answers_stream(port):
            if proc.poll() is not None:
                raise SystemExit(f"serve exited with {proc.returncode}: see {data / 'server.log'}")
            if time.monotonic() - started > 120:
                raise SystemExit("serve did not answer within 120 s")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        rss = None
        if idle_after is not None:
            time.sleep(idle_after)
            rss = rss_kib(proc.pid)
        return elapsed, rss
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chroot", type=Path, help="run BINARY inside this Debian tree")
    parser.add_argument("binary")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="measure-", dir=args.chroot / "tmp" if args.chroot else None))
    command = [str(FOREIGN_CHROOT), str(args.chroot), args.binary] if args.chroot else [args.binary]
    try:
        runs = []
        for n in range(args.runs):
            data = base / f"run{n}"
            seen = f"/tmp/{base.name}/run{n}" if args.chroot else str(data)
            runs.append(one_start(command, data, seen, None if args.chroot else 3.0))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    times = ", ".join(f"{t:.2f}" for t, _ in runs)
    print(f"start-up to first accepted XMPP stream: median {statistics.median(t for t, _ in runs):.2f} s "
          f"(runs: {times} s)")
    if not args.chroot:
        rss = statistics.median(r for _, r in runs if r is not None)
        print(f"idle RSS 3 s after start-up (process and children): median {rss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
