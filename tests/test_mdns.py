"""mDNS on a real (namespaced) LAN: the appliance announces itself once it listens, `appliance discover`
and avahi find it with the right port, domain and certificate fingerprint, a second box with the same
names is renamed, and the announcement is withdrawn when the server stops.

Each test builds two fresh network namespaces joined by a veth pair (tests/mdns_lan.py); the server
runs in one, the browsers in the other. Skipped where namespaces cannot be made (not root, no `ip`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.net.certs import fingerprint_sha256
from appliance.net.mdns import ADDRESS_CHECK_INTERVAL
from tests.harness import ServerProcess, free_port
from tests.mdns_lan import AVAHI_TOOLS, VethLan, avahi_browse_command, start_in, veth_lan
from tests import netem, slix
from tests.netem import JsonLines

LAN_SCRIPT = str(Path(__file__).with_name("mdns_lan.py"))
MDNS_ON = {"mdns.enabled": True, "http.enabled": False}


def discover(lan: VethLan, namespace: str, timeout: float = 3.0) -> subprocess.CompletedProcess:
    return lan.run_to_completion(namespace, [sys.executable, "-m", "appliance", "discover", "--json",
                                        "--timeout", str(timeout)], timeout=timeout + 30)


def pin(server: ServerProcess) -> str:
    """The certificate fingerprint as the TXT record carries it."""
    return fingerprint_sha256(server.cert).replace(":", "").lower()


def test_announced_after_listening_found_by_discover_and_withdrawn_on_stop(tmp_path: Path) -> None:
    with veth_lan() as lan:
        browser = JsonLines(lan.run(lan.client_ns, [sys.executable, LAN_SCRIPT, "browse"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        browser.wait_for("ready", 20)
        http_port = free_port()
        server = ServerProcess(tmp_path / "box", host=lan.server_address,
                               settings={"mdns.enabled": True, "http.enabled": True, "http.port": http_port,
                                         "http.tls_port": 0})
        try:
            start_in(lan, lan.server_ns, server)
            # The browser connected the moment it resolved the announcement: the listener came first.
            added = browser.wait_for("added", 15)
            assert added["connect"] == "ok", added
            assert (added["addresses"], added["port"]) == ([lan.server_address], server.port)

            result = discover(lan, lan.client_ns)
            assert result.returncode == 0, result.stderr
            [found] = json.loads(result.stdout)
            assert found["name"].startswith("Chat appliance on ")
            assert found["host"].endswith(".local.")
            assert found["addresses"] == [lan.server_address]
            assert (found["port"], found["tls_port"]) == (server.port, server.tls_port)
            assert found["domain"] == server.domain
            assert found["fingerprint"] == pin(server)
            assert found["web"] == f"http://{lan.server_address}:{http_port}"

            stopped_at = time.monotonic()
            assert server.stop() == 0
            # Goodbye packets: a browser that saw the service drops it now, not when its TTL runs out.
            removed = browser.wait_for("removed", 10)
            assert removed["name"] == added["name"] + "._xmpp-client._tcp.local."
            assert time.monotonic() - stopped_at < 10
            gone = discover(lan, lan.client_ns, timeout=2)
            assert gone.returncode == 1 and json.loads(gone.stdout) == []
        finally:
            server.stop()


def avahi_lines(browser: JsonLines, sign: str, types: set[str],
                timeout: float) -> dict[str, list[str]]:
    """avahi-browse -p lines starting with `sign` for each of `types`, for the server's domain."""
    seen: dict[str, list[str]] = {}
    deadline = time.monotonic() + timeout
    while set(seen) != types:
        line = browser.next(max(0.01, deadline - time.monotonic())).get("line", "")
        fields = line.split(";")
        if fields[0] == sign and len(fields) > 4 and fields[4] in types:
            seen[fields[4]] = fields
    return seen


@pytest.mark.skipif(not all(shutil.which(tool) for tool in AVAHI_TOOLS),
                    reason="needs avahi-daemon, avahi-browse (Debian avahi-daemon, avahi-utils), dbus-daemon "
                           "and unshare")
def test_avahi_sees_the_services_and_their_withdrawal(tmp_path: Path) -> None:
    with veth_lan() as lan:
        browser = JsonLines(lan.run(lan.client_ns, avahi_browse_command(lan.client_if),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        assert browser.wait_for("noise", 20)["line"] == "ready", browser.seen
        http_port = free_port()
        server = ServerProcess(tmp_path / "box", host=lan.server_address,
                               settings={"mdns.enabled": True, "mdns.instance": "Family chat",
                                         "http.enabled": True, "http.port": http_port, "http.tls_port": 0})
        types = {"_xmpp-client._tcp", "_xmpps-client._tcp", "_http._tcp"}
        try:
            start_in(lan, lan.server_ns, server)
            resolved = avahi_lines(browser, "=", types, 20)
            ports = {kind: int(fields[8]) for kind, fields in resolved.items()}
            assert ports == {"_xmpp-client._tcp": server.port, "_xmpps-client._tcp": server.tls_port,
                             "_http._tcp": http_port}
            for fields in resolved.values():
                assert fields[3] == r"Family\032chat" and fields[7] == lan.server_address, fields
                txt = fields[9]
                assert f'"fp={pin(server)}"' in txt and f'"domain={server.domain}"' in txt, txt
                assert f'"http=http://{lan.server_address}:{http_port}"' in txt and '"txtvers=1"' in txt
            assert server.stop() == 0
            assert set(avahi_lines(browser, "-", types, 10)) == types
        finally:
            server.stop()


def test_a_second_box_with_the_same_names_is_renamed(tmp_path: Path) -> None:
    """Both namespaces share this machine's host name and both boxes are told the same instance name:
    the second one's probes hear the first and it takes "<name>-2" and "<host>-2.local."."""
    with veth_lan() as lan:
        settings = {**MDNS_ON, "mdns.instance": "Family chat"}
        first = ServerProcess(tmp_path / "first", host=lan.server_address, settings=settings)
        second = ServerProcess(tmp_path / "second", host=lan.client_address, settings=settings)
        try:
            start_in(lan, lan.server_ns, first)
            start_in(lan, lan.client_ns, second)
            assert second.logged("this box was renamed 'Family chat-2'")
            result = discover(lan, lan.server_ns)
            assert result.returncode == 0, result.stderr
            found = {entry["name"]: entry for entry in json.loads(result.stdout)}
            assert set(found) == {"Family chat", "Family chat-2"}
            for entry, box, address in ((found["Family chat"], first, lan.server_address),
                                        (found["Family chat-2"], second, lan.client_address)):
                assert (entry["addresses"], entry["port"], entry["fingerprint"]) == ([address], box.port, pin(box))
            assert found["Family chat-2"]["host"] == found["Family chat"]["host"].replace(".local.", "-2.local.")
        finally:
            second.stop()
            first.stop()


def test_the_announcement_follows_the_lan_address(tmp_path: Path) -> None:
    """The box starts before its DHCP lease, then gets an address, then is renumbered: the records follow,
    each time within ADDRESS_CHECK_INTERVAL, and the server never stops."""
    with veth_lan() as lan:
        netem._ip("-n", lan.server_ns, "addr", "del", f"{lan.server_address}/24", "dev", lan.server_if)
        server = ServerProcess(tmp_path / "box", host="0.0.0.0", settings=MDNS_ON)
        try:
            start_in(lan, lan.server_ns, server, logged="mDNS: no LAN address yet")
            netem._ip("-n", lan.server_ns, "addr", "add", f"{lan.server_address}/24", "dev", lan.server_if)
            assert server.logged("mDNS: announced", ADDRESS_CHECK_INTERVAL + 10), server.log_text()[-1500:]
            assert announced_addresses(lan, server) == [lan.server_address]

            netem._ip("-n", lan.server_ns, "addr", "del", f"{lan.server_address}/24", "dev", lan.server_if)
            netem._ip("-n", lan.server_ns, "addr", "add", "10.77.0.5/24", "dev", lan.server_if)
            changed = f"LAN addresses changed from {lan.server_address} to 10.77.0.5;"
            assert server.logged(changed, 2 * ADDRESS_CHECK_INTERVAL + 5), server.log_text()[-1500:]
            assert announced_addresses(lan, server) == ["10.77.0.5"]
        finally:
            server.stop()


def announced_addresses(lan: VethLan, server: ServerProcess) -> list[str]:
    result = discover(lan, lan.client_ns)
    assert result.returncode == 0, result.stderr
    [found] = json.loads(result.stdout)
    assert found["port"] == server.port
    return found["addresses"]


def test_an_unusable_mdns_interface_is_logged_and_the_server_runs_on(tmp_path: Path) -> None:
    """192.0.2.1 (TEST-NET-1) is on no interface of this machine: zeroconf cannot join the group there.
    No namespace needed: nothing is sent on the host's network."""
    server = ServerProcess(tmp_path / "box", settings={"mdns.enabled": True, "mdns.interfaces": ["192.0.2.1"]})
    server.start()
    try:
        assert server.logged("WARNING appliance.mdns: mDNS: cannot announce on 192.0.2.1", 15), server.log_text()
        assert "UDP port 5353" in server.log_text()
        jid = server.add_user("alice")

        async def log_in() -> None:
            client = await slix.connected(server, jid)
            await client.logout()
        slix.run(log_in())
        assert server.stop() == 0
    finally:
        server.stop()


def test_discover_with_nothing_announced_says_so_within_its_timeout() -> None:
    with veth_lan() as lan:
        started = time.monotonic()
        result = discover(lan, lan.client_ns, timeout=2)
        elapsed = time.monotonic() - started
        assert result.returncode == 1
        assert json.loads(result.stdout) == []
        assert "no appliance answered within 2 s" in result.stderr
        assert "multicast" in result.stderr and "5353" in result.stderr
        assert elapsed < 2 + 8, elapsed   # the timeout, plus starting Python and zeroconf


def test_discover_rejects_a_bad_timeout() -> None:
    result = subprocess.run([sys.executable, "-m", "appliance", "discover", "--timeout", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "appliance discover: --timeout must be a positive number of seconds"
