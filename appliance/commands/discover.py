"""`appliance discover`: list the chat appliances on the local network (mDNS / DNS-SD).

Browses `_xmpp-client._tcp.local.` for `--timeout` seconds (each appliance answers within about a
second; the rest of the time lets slow ones and several boxes answer), resolves every instance found
and prints what a client needs: name, host, addresses, ports, XMPP domain, certificate fingerprint
and web address. Only instances whose TXT record carries `fp` are appliances'; other XMPP servers
that announce themselves are listed too, with the fields they give.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from typing import Any

from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

from appliance.net.mdns import XMPP_CLIENT, XMPPS_CLIENT

FOUND, NONE_FOUND, USAGE = 0, 1, 2
RESOLVE_MS = 3000        # an answer to one resolve question; the browser's cache usually has it already


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("discover", help="list the chat appliances on the local network (mDNS)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds to listen for answers (default 5)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        print("appliance discover: --timeout must be a positive number of seconds", file=sys.stderr)
        return USAGE
    try:
        found = browse(args.timeout)
    except (OSError, RuntimeError) as exc:  # zeroconf raises RuntimeError when no interface has an address
        print(f"appliance discover: cannot listen for mDNS on this machine ({exc}); is the network up?",
              file=sys.stderr)
        return NONE_FOUND
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for appliance in found:
            print(describe(appliance))
    if not found:
        print(f"appliance discover: no appliance answered within {args.timeout:g} s. Is this machine on "
              "the same network (same Wi-Fi, not a guest network)? Do the network and this machine allow "
              "multicast (mDNS, UDP port 5353; check the firewall)? Is the appliance running with "
              "[mdns] enabled?", file=sys.stderr)
        return NONE_FOUND
    return FOUND


def browse(timeout: float) -> list[dict[str, Any]]:
    """Every `_xmpp-client._tcp` instance that is announced during `timeout` seconds, resolved."""
    deadline = time.monotonic() + timeout
    events: queue.Queue[tuple[str, ServiceStateChange]] = queue.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        events.put((name, state_change))   # called on zeroconf's thread: resolve on ours

    zc = Zeroconf()
    try:
        browser = ServiceBrowser(zc, XMPP_CLIENT, handlers=[on_change])
        found: dict[str, dict[str, Any]] = {}
        while (left := deadline - time.monotonic()) > 0:
            try:
                name, change = events.get(timeout=left)
            except queue.Empty:
                break
            if change is ServiceStateChange.Removed:
                found.pop(name, None)
            elif (entry := resolve(zc, name, deadline)) is not None:
                found[name] = entry
        browser.cancel()
        return sorted(found.values(), key=lambda e: e["name"])
    finally:
        zc.close()


def resolve(zc: Zeroconf, name: str, deadline: float) -> dict[str, Any] | None:
    """The instance's details, or None when it did not answer (it went away meanwhile)."""
    wait_ms = int(max(0.0, min(RESOLVE_MS / 1000, deadline - time.monotonic())) * 1000) or 1
    info = zc.get_service_info(XMPP_CLIENT, name, timeout=wait_ms)
    if info is None:
        return None
    txt = {key.decode(errors="replace"): (value or b"").decode(errors="replace")
           for key, value in info.properties.items()}
    tls = zc.get_service_info(XMPPS_CLIENT, name[:-len(XMPP_CLIENT)] + XMPPS_CLIENT, timeout=wait_ms)
    return {
        "name": name[:-len(XMPP_CLIENT) - 1],
        "host": info.server,
        "addresses": info.parsed_scoped_addresses(),
        "port": info.port,
        "tls_port": tls.port if tls is not None else None,
        "domain": txt.get("domain"),
        "fingerprint": txt.get("fp"),
        "web": txt.get("http"),
        "version": txt.get("version"),
    }


def describe(appliance: dict[str, Any]) -> str:
    """Several indented lines for one appliance, for people."""
    fingerprint = appliance["fingerprint"]
    lines = [appliance["name"],
             f"  host         {appliance['host']}  ({', '.join(appliance['addresses']) or 'no address'})",
             f"  XMPP domain  {appliance['domain'] or '(not announced)'}",
             f"  ports        {appliance['port']} (STARTTLS)"
             + (f", {appliance['tls_port']} (direct TLS)" if appliance["tls_port"] else ""),
             "  fingerprint  " + (":".join(fingerprint[i:i + 2] for i in range(0, len(fingerprint), 2)).upper()
                                  if fingerprint else "(not announced)")]
    if appliance["web"]:
        lines.append(f"  web          {appliance['web']}")
    return "\n".join(lines)
