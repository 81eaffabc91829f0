"""A two-namespace LAN for the mDNS tests: a veth pair with multicast, nothing from the host's network.

    with veth_lan() as lan:                  # skips the test unless root and namespaces work
        server = start_in(lan, lan.server_ns, ServerProcess(tmp, host=lan.server_address, settings=...))
        lan.run_to_completion(lan.client_ns, [sys.executable, "-m", "appliance", "discover", "--json"])
        browser = JsonLines(lan.run(lan.client_ns, [sys.executable, __file__, "browse"], stdout=PIPE))

tests/netem.py links the *root* namespace to one namespace through TUN devices: a server there would
announce on the host's real network. Here both ends are fresh namespaces (named like netem's,
`appl-<pid>-<n>`, so its clean-up of namespaces left by a killed test run covers these too), joined by
a veth pair with a route for 224.0.0.0/4, the recipe of firmware-notes §4. The namespaces (and the
veth pair with them) are deleted in `finally`.

`python tests/mdns_lan.py browse` is the client side of the ordering and goodbye tests: it browses
`_xmpp-client._tcp`, and the moment an instance is resolved it opens a TCP connection to the announced
address and port (an appliance that announced before listening is refused), printing one JSON line per
event: ready, added (with the resolved fields and "connect": "ok" or the error), removed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import netem  # noqa: E402
from tests.harness import ServerProcess  # noqa: E402


@dataclass
class VethLan:
    """Two namespaces on one veth link: the server's side and the client's. Made by `veth_lan()`."""

    server_ns: str
    client_ns: str
    server_if: str
    client_if: str
    server_address: str = "10.77.0.1"
    client_address: str = "10.77.0.2"
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, namespace: str, cmd: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start `cmd` in `namespace` (the Popen's pid is the command's: `ip netns exec` execs it).
        Killed when the LAN is torn down if still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", namespace, *cmd], **popen_kwargs)
        self.processes.append(proc)
        return proc

    def run_to_completion(self, namespace: str, cmd: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run `cmd` in `namespace` to completion (bounded); the exit code is the caller's to judge."""
        return subprocess.run(["ip", "netns", "exec", namespace, *cmd], capture_output=True, text=True,
                              timeout=timeout)


@contextmanager
def veth_lan() -> Iterator[VethLan]:
    if os.geteuid() != 0:
        netem._skip("needs root: two network namespaces and a veth pair are created for the LAN")
    try:
        subprocess.run(["ip", "-V"], capture_output=True, timeout=10)
    except FileNotFoundError:
        netem._skip("needs the `ip` command (Debian package iproute2)")
    netem._reap_stale()
    pid = os.getpid()
    names = [f"{netem.PREFIX}-{pid}-{next(netem._counter)}" for _ in range(2)]
    made: list[str] = []
    lan: VethLan | None = None
    try:
        for name in names:
            result = netem._ip("netns", "add", name, check=False)
            if result.returncode != 0:
                netem._skip(f"cannot create a network namespace (`ip netns add` said: {result.stderr.strip()})")
            made.append(name)
        n = names[0].rsplit("-", 1)[1]
        lan = VethLan(names[0], names[1], f"mv{pid}-{n}s", f"mv{pid}-{n}c")   # at most 15 characters
        netem._ip("link", "add", lan.server_if, "type", "veth", "peer", "name", lan.client_if)
        for ns, dev, address in ((lan.server_ns, lan.server_if, lan.server_address),
                                 (lan.client_ns, lan.client_if, lan.client_address)):
            netem._ip("link", "set", dev, "netns", ns)
            netem._ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            netem._ip("-n", ns, "link", "set", "lo", "up")
            netem._ip("-n", ns, "link", "set", dev, "up", "multicast", "on")
            netem._ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
        yield lan
    finally:
        if lan is not None:
            netem.kill_all(lan.processes)
        for name in made:
            netem._ip("netns", "del", name, check=False)   # the veth pair goes with its namespace


def start_in(lan: VethLan, namespace: str, server: ServerProcess, timeout: float = 20.0,
             logged: str = "mDNS: announced") -> ServerProcess:
    """Start the appliance in `namespace` and wait until it logged `logged`: by default, until it announced
    itself (its listeners come first). The harness's own start() cannot be used: it waits for the port
    from the root namespace."""
    server.data.mkdir(parents=True, exist_ok=True)
    config = server.write_config()
    with open(server.log_path, "ab") as log:
        server.proc = lan.run(namespace, [sys.executable, "-m", "appliance", "serve", "--config", str(config)],
                              stdout=log, stderr=subprocess.STDOUT)
    if not server.logged(logged, timeout):
        raise AssertionError(f"{logged!r} not logged within {timeout} s; log:\n{server.log_text()[-3000:]}")
    return server


# ---- avahi, privately ------------------------------------------------------------------------------

AVAHI_TOOLS = ("avahi-daemon", "avahi-browse", "dbus-daemon", "unshare")

DBUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/> <allow own="*"/> <allow send_destination="*"/> <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

# Browse only: an avahi that published this machine's host name would clash with the appliance's.
AVAHI_CONFIG = """[server]
host-name=avahi-browser
use-ipv6=no
allow-interfaces={interface}
enable-dbus=yes
[publish]
disable-publishing=yes
"""

# In a private mount and pid namespace: /run is a fresh tmpfs (the host's dbus and avahi are not
# touched) and when avahi-browse (pid 1 there, after exec) ends, the kernel ends both daemons.
AVAHI_SCRIPT = """set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/dbus /run/avahi-daemon
printf '%s' "$1" > /run/dbus.conf
printf '%s' "$2" > /run/avahi.conf
dbus-daemon --config-file=/run/dbus.conf --fork --nopidfile
avahi-daemon --no-drop-root --no-chroot --no-rlimits -f /run/avahi.conf 2>/run/avahi.log &
for _ in $(seq 100); do avahi-browse -a -t -p >/dev/null 2>&1 && break; sleep 0.1; done
echo ready
exec avahi-browse -a -r -p -k
"""


def avahi_browse_command(interface: str) -> list[str]:
    """`avahi-browse -arpk` (-k: raw service types) after a first line `ready`; runs until killed.
    Lines: `=;if;IPv4;name;type;local;host;address;port;"txt" ...` resolved, `-;...` withdrawn."""
    return ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child",
            "sh", "-c", AVAHI_SCRIPT, "sh", DBUS_CONFIG, AVAHI_CONFIG.format(interface=interface)]


# ---- the browsing client (run in the client namespace) -------------------------------------------

def browse() -> None:
    import json
    import socket
    import threading
    import time

    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

    from appliance.commands.discover import resolve
    from appliance.net.mdns import XMPP_CLIENT

    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            emit("removed", name=name)
        elif state_change is ServiceStateChange.Added:
            threading.Thread(target=connect_at_once, args=(zeroconf, name)).start()

    def connect_at_once(zeroconf: Zeroconf, name: str) -> None:
        entry = resolve(zeroconf, name, time.monotonic() + 5) or {"name": name, "addresses": [], "port": 0}
        try:
            socket.create_connection((entry["addresses"][0], entry["port"]), timeout=2).close()
            outcome = "ok"
        except (OSError, IndexError) as exc:
            outcome = repr(exc)
        emit("added", connect=outcome, **entry)

    zc = Zeroconf()
    ServiceBrowser(zc, XMPP_CLIENT, handlers=[on_change])
    emit("ready")
    sys.stdin.read()   # until the test closes stdin or kills this process
    zc.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["browse"]:
        browse()
    else:
        sys.exit("usage: mdns_lan.py browse")
