"""Where phones reach the box: the host to connect to and the web address of invite pages.

A LAN box has no DNS name a stock phone client can resolve (Conversations does not do mDNS), so
the landing page and `appliance invite` show a host for manual set-up: `public_host` from the
configuration, else the box's first LAN address (IPv4 first: what people can type).
"""

from __future__ import annotations

import ipaddress
import logging

import ifaddr

from appliance.config import Config

log = logging.getLogger("appliance.links")


def lan_addresses() -> list[str]:
    """The box's addresses, IPv4 first, loopback and link-local left out (a link-local address
    needs a scope a client cannot put in a URL, and changes with every interface)."""
    try:
        adapters = ifaddr.get_adapters()
    except Exception as exc:  # an odd platform must not stop the server from starting
        log.warning("cannot list network interfaces (%s)", exc)
        return []
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for adapter in adapters:
        for ip in adapter.ips:
            # IPv6 entries are (address, flowinfo, scope_id).
            raw = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                address = ipaddress.ip_address(raw.split("%")[0])
            except ValueError:
                continue
            if not address.is_link_local and not address.is_loopback:
                found.append(address)
    found.sort(key=lambda a: a.version)
    return list(dict.fromkeys(str(a) for a in found))


def public_host(config: Config) -> str:
    if config.public_host:
        return config.public_host
    addresses = lan_addresses()
    return addresses[0] if addresses else config.domain


def http_base(config: Config) -> str:
    """The web address of this box's pages, without a trailing slash."""
    if config.http.public_url:
        return config.http.public_url.rstrip("/")
    host = public_host(config)
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{config.http.port}"


def landing_url(config: Config, token: str) -> str | None:
    """The invite's landing page, or None when the web server is off."""
    if not config.http.enabled:
        return None
    return f"{http_base(config)}/invite/{token}"
