"""Announce the appliance on the LAN over mDNS / DNS-SD, so `appliance discover`, avahi and Bonjour find it.

Three services share one instance name ("Chat appliance on <hostname>" unless configured) and the
host name `<hostname>.local.`: `_xmpp-client._tcp` (STARTTLS port), `_xmpps-client._tcp` (XEP-0368
direct TLS) and, when the web server runs, `_http._tcp` (the landing pages). Their TXT records carry
what a client needs to trust the box without a public certificate: the XMPP domain and the TLS
certificate's SHA-256 fingerprint (`fp`, lowercase hex), plus the web address and the version.

zeroconf runs its own thread and event loop; every blocking call goes through
`trio.to_thread.run_sync`. Name conflicts are zeroconf's own: the probe before announcing sees another
box's instance of the same name and renames ours "<name>-2" (then "-3", ...). The caller starts this
task only after the listeners are up: a client that hears the announcement connects at once. When the
task ends (also on cancellation) goodbye packets withdraw the services, within GOODBYE_TIMEOUT. mDNS is
a convenience: any failure is logged and the XMPP server keeps running.
"""

from __future__ import annotations

import logging
import re
import socket
from functools import partial
from urllib.parse import urlsplit

import trio
from zeroconf import AddressResolver, ServiceInfo, Zeroconf

from appliance import __version__
from appliance.config import Config
from appliance.pairing.links import lan_addresses

log = logging.getLogger("appliance.mdns")

XMPP_CLIENT = "_xmpp-client._tcp.local."
XMPPS_CLIENT = "_xmpps-client._tcp.local."
HTTP = "_http._tcp.local."
GOODBYE_TIMEOUT = 3.0            # seconds the shutdown waits for the goodbye packets
ADDRESS_CHECK_INTERVAL = 10.0    # seconds between looks at the LAN addresses (DHCP renumbering, Wi-Fi up)
HOST_PROBE_MS = 1000             # how long to wait for another device answering for our host name
MAX_INSTANCE_BYTES = 60          # a DNS label is at most 63 bytes; zeroconf may append "-2"


def host_label() -> str:
    """This machine's name as a DNS label: first label of the hostname, lowercase, letters, digits, '-'."""
    name = socket.gethostname().split(".")[0].lower()
    return re.sub(r"[^a-z0-9-]+", "-", name).strip("-") or "appliance"


def instance_name(config: Config) -> str:
    name = config.mdns.instance or f"Chat appliance on {host_label()}"
    return name.encode()[:MAX_INSTANCE_BYTES].decode(errors="ignore")


def txt_records(config: Config, fingerprint: str, http_url: str | None) -> dict[str, str]:
    """TXT keys (`txtvers` first, RFC 6763 §6.7); fp is the certificate's SHA-256 without colons."""
    records = {"txtvers": "1", "domain": config.domain, "fp": fingerprint.replace(":", "").lower()}
    if http_url:
        records["http"] = http_url
    records["version"] = __version__
    return records


def service_ports(c2s_port: int, c2s_tls_port: int, http_url: str | None) -> dict[str, int]:
    ports = {XMPP_CLIENT: c2s_port, XMPPS_CLIENT: c2s_tls_port}
    if http_url:
        url = urlsplit(http_url)
        ports[HTTP] = url.port or (443 if url.scheme == "https" else 80)
    return ports


def free_host_name(zc: Zeroconf, addresses: list[str]) -> str:
    """`<hostname>.local.`, or `<hostname>-2.local.` (-3, ...) when another device answers for that name
    with none of our addresses: two boxes both called "raspberrypi". zeroconf probes instance names only;
    an answer sharing an address is this machine itself (its avahi-daemon, say)."""
    n = 1
    while True:
        host = f"{host_label()}{'' if n == 1 else f'-{n}'}.local."
        other = AddressResolver(host)
        if not other.request(zc, HOST_PROBE_MS) or set(other.parsed_addresses()) & set(addresses):
            return host
        n += 1


async def announce(config: Config, c2s_port: int, c2s_tls_port: int, fingerprint: str,
                   http_url: str | None = None, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Announce until cancelled, then say goodbye. `started()` comes once the services are registered,
    or at once when they cannot be (logged: the server runs on without mDNS)."""
    addresses = list(config.mdns.interfaces) or lan_addresses()
    if not addresses:  # a box that starts before its DHCP lease: the announcement waits, the server does not
        log.warning("mDNS: no LAN address yet (is the network up?); announcing once there is one")
        task_status.started()
        task_status = trio.TASK_STATUS_IGNORED
        while not addresses:
            await trio.sleep(ADDRESS_CHECK_INTERVAL)
            addresses = lan_addresses()
    try:
        zc = await trio.to_thread.run_sync(Zeroconf, addresses)
    except Exception as exc:  # no multicast route, no permission, odd interfaces: none may stop the server
        _warn_unavailable(addresses, exc)
        task_status.started()
        return
    try:
        infos = await _register(zc, config, addresses, service_ports(c2s_port, c2s_tls_port, http_url),
                                txt_records(config, fingerprint, http_url))
        task_status.started()
        if infos and config.mdns.interfaces:
            await trio.sleep_forever()  # the operator chose the addresses: they are not followed
        elif infos:
            await _follow_addresses(zc, infos, addresses)
    finally:
        with trio.move_on_after(GOODBYE_TIMEOUT) as goodbye:
            goodbye.shield = True
            await trio.to_thread.run_sync(_withdraw, zc, abandon_on_cancel=True)
        if goodbye.cancelled_caught:
            log.warning("mDNS: goodbye packets not sent within %.0f s; other devices forget this box when "
                        "its records expire", GOODBYE_TIMEOUT)


async def _register(zc: Zeroconf, config: Config, addresses: list[str], ports: dict[str, int],
                    txt: dict[str, str]) -> list[ServiceInfo] | None:
    """Claim a host name, then probe and announce each service; None (logged) when that fails."""
    failures: list[Exception] = []

    async def register(info: ServiceInfo) -> None:
        try:
            await trio.to_thread.run_sync(partial(zc.register_service, info, allow_name_change=True))
        except Exception as exc:
            failures.append(exc)

    try:
        host = await trio.to_thread.run_sync(free_host_name, zc, addresses)
    except Exception as exc:
        _warn_unavailable(addresses, exc)
        return None
    wanted = instance_name(config)
    infos = [ServiceInfo(kind, f"{wanted}.{kind}", port=port, properties=txt, server=host,
                         parsed_addresses=addresses) for kind, port in ports.items()]
    async with trio.open_nursery() as nursery:  # the probes take about 1.5 s each: run them side by side
        for info in infos:
            nursery.start_soon(register, info)
    if failures:
        _warn_unavailable(addresses, failures[0])
        return None
    _log_announced(infos, wanted, addresses)
    return infos


def _log_announced(infos: list[ServiceInfo], wanted: str, addresses: list[str]) -> None:
    names = sorted({info.name[:-len(info.type) - 1] for info in infos})
    log.info("mDNS: announced %s as %r on %s (host %s, ports %s)", ", ".join(i.type for i in infos),
             " / ".join(names), ", ".join(addresses), infos[0].server, ", ".join(str(i.port) for i in infos))
    if names != [wanted]:
        log.warning("mDNS: another device on the LAN announces %r; this box was renamed %r (set [mdns] "
                    "instance to choose a name of your own)", wanted, " / ".join(names))
    if infos[0].server != f"{host_label()}.local.":
        log.warning("mDNS: another device on the LAN answers for %s.local; this box is %s", host_label(),
                    infos[0].server)


async def _follow_addresses(zc: Zeroconf, infos: list[ServiceInfo], addresses: list[str]) -> None:
    """Re-announce with the new addresses when the LAN addresses change (DHCP lease, Wi-Fi joined)."""
    current = addresses
    while True:
        await trio.sleep(ADDRESS_CHECK_INTERVAL)
        found = lan_addresses()
        if not found or set(found) == set(current):
            continue  # no address at all: keep the old records, the link is probably just down
        try:
            await trio.to_thread.run_sync(_readdress, zc, infos, found)
        except Exception as exc:
            log.warning("mDNS: LAN addresses changed to %s but could not be announced (%s); will try again",
                        ", ".join(found), exc)
            continue
        log.info("mDNS: LAN addresses changed from %s to %s; announced the new ones",
                 ", ".join(current), ", ".join(found))
        current = found


def _readdress(zc: Zeroconf, infos: list[ServiceInfo], addresses: list[str]) -> None:
    for info in infos:  # first the records, so that no answer carries a stale address after the switch
        info.addresses = addresses
    zc.update_interfaces(addresses)
    for info in infos:
        zc.update_service(info)


def _withdraw(zc: Zeroconf) -> None:
    """Goodbye packets (TTL 0) for every registered service, then close the sockets and threads."""
    try:
        zc.unregister_all_services()
    except Exception as exc:
        log.warning("mDNS: goodbye packets failed (%s)", exc)
    finally:
        zc.close()


def _warn_unavailable(addresses: list[str], exc: Exception) -> None:
    log.warning("mDNS: cannot announce on %s (%s: %s); the server runs on, but `appliance discover` will not "
                "find it. Check that the interface allows multicast (`ip link` shows MULTICAST), that a "
                "route covers 224.0.0.0/4, that UDP port 5353 is not blocked, or set [mdns] interfaces "
                "or enabled = false", ", ".join(addresses), type(exc).__name__, exc)
