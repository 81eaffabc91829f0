"""The booted arm64 image is found by `appliance discover` (mDNS) and answers XMPP at what it announces.

User-mode networking carries no multicast, so the VM gets a tap device inside a network namespace the
test makes (nothing of the host's network is in it): 10.81.0.1/24 on the tap, a route for
224.0.0.0/4, and dnsmasq (a real DHCP server, bounded by `timeout`, stopped by its process group)
leasing the guest an address, as a home router would. qemu runs in the namespace on that tap; the
repository's `appliance discover` and a small XMPP probe run there with `ip netns exec`. The
namespace (and the tap with it) is deleted in `finally`. Recipe: ../shared/design/firmware-notes.md §4b.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tests import netem
from tests.firmware.vm import VM, VMError, disk_copy

ROOT = Path(__file__).resolve().parents[2]
APPLIANCE = ROOT / ".venv" / "bin" / "appliance"
HOST_ADDRESS, DHCP_RANGE = "10.81.0.1", "10.81.0.50,10.81.0.99,1h"
TAP, MAC = "qtap0", "52:54:00:81:00:02"
FOUND_WITHIN = 900   # seconds from qemu's start: boot, first-boot set-up, DHCP, start, announce
# Opens a TCP connection (TLS with --tls: the direct-TLS port; the box's certificate is self-signed,
# its fingerprint is what a client pins), sends a stream header and prints what comes back.
PROBE = """
import socket, ssl, sys
address, port, domain, tls = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:] == ["--tls"]
sock = socket.create_connection((address, port), timeout=30)
if tls:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    sock = context.wrap_socket(sock, server_hostname=domain)
sock.sendall(f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
             "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode())
answer = b""
while b"</stream:features>" not in answer:
    chunk = sock.recv(4096)
    if not chunk:
        break
    answer += chunk
print(answer.decode(errors="replace"))
"""


@dataclass
class TapLan:
    namespace: str
    leases: Path

    def run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.namespace, *command], capture_output=True,
                              text=True, timeout=timeout)

    def leased_address(self, mac: str) -> str | None:
        """The address dnsmasq leased to `mac` (lease file lines: expiry mac address name client-id)."""
        text = self.leases.read_text() if self.leases.exists() else ""
        return next((line.split()[2] for line in text.splitlines() if line.split()[1:2] == [mac]), None)


@contextmanager
def tap_lan(workdir: Path, lifetime: int) -> Iterator[TapLan]:
    """A fresh namespace holding a tap device with multicast and a DHCP server on it."""
    namespace = f"{netem.PREFIX}-{os.getpid()}-{next(netem._counter)}"   # netem reaps them if we die
    netem._ip("netns", "add", namespace)
    dnsmasq: subprocess.Popen | None = None
    try:
        for args in (["link", "set", "lo", "up"], ["tuntap", "add", "dev", TAP, "mode", "tap"],
                     ["addr", "add", f"{HOST_ADDRESS}/24", "dev", TAP],
                     ["link", "set", TAP, "up", "multicast", "on"], ["route", "add", "224.0.0.0/4", "dev", TAP]):
            netem._ip("-n", namespace, *args)
        lan = TapLan(namespace, workdir / "dnsmasq.leases")
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "timeout", "-s", "KILL", str(lifetime),
             "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root",
             f"--interface={TAP}", "--bind-interfaces", f"--dhcp-range={DHCP_RANGE}",
             f"--dhcp-leasefile={lan.leases}", "--pid-file=", "--log-dhcp", "--log-facility=-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(workdir / "dnsmasq.log", "wb"),
            start_new_session=True)
        yield lan
    finally:
        if dnsmasq is not None:
            if dnsmasq.poll() is None:
                os.killpg(dnsmasq.pid, signal.SIGKILL)
            dnsmasq.wait(timeout=30)
        netem._ip("netns", "del", namespace, check=False)   # the tap goes with it


def discovered(lan: TapLan, vm: VM) -> dict[str, Any]:
    """The first appliance `appliance discover` lists in the namespace, asking until the VM's budget."""
    while True:
        result = lan.run([str(APPLIANCE), "discover", "--timeout", "8", "--json"], timeout=60)
        if result.returncode == 0:
            found = json.loads(result.stdout)
            assert len(found) == 1, found       # only the VM is on this link
            return found[0]
        if vm.proc is None or vm.proc.poll() is not None or vm.since_start() > FOUND_WITHIN:
            raise VMError(f"no appliance discovered ({result.stderr.strip()}); console:\n{vm.tail()}")
        time.sleep(5)


def probe(lan: TapLan, address: str, port: int, domain: str, *tls: str) -> str:
    result = lan.run([sys.executable, "-c", PROBE, address, str(port), domain, *tls], timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_booted_image_is_discovered_and_answers_at_the_announced_address(image_arm64: Path,
                                                                            tmp_path: Path) -> None:
    disk = disk_copy(image_arm64, tmp_path)
    with tap_lan(tmp_path, lifetime=FOUND_WITHIN + 300) as lan:
        with VM(disk, tmp_path, tap=TAP, netns=lan.namespace, mac=MAC, timeout=FOUND_WITHIN + 300) as vm:
            box = discovered(lan, vm)
            found_after = vm.since_start()
            leased = lan.leased_address(MAC)
            assert leased is not None, (lan.leases.read_text() if lan.leases.exists() else "no leases")
            assert leased in box["addresses"], box
            assert box["port"] == 5222 and box["tls_port"] == 5223, box
            assert re.fullmatch(r"appliance-[0-9a-z]+\.local", box["domain"]), box
            assert re.fullmatch(r"[0-9a-f]{64}", box["fingerprint"] or ""), box
            domain = box["domain"]
            for port, tls in ((box["port"], ()), (box["tls_port"], ("--tls",))):
                answer = probe(lan, leased, port, domain, *tls)
                assert re.search(rf"<stream:stream [^>]*from=[\"']{re.escape(domain)}[\"']", answer), answer
                assert "<stream:features" in answer, answer
            print(f"discovered {box['name']} at {leased} {found_after:.0f} s after qemu started")
