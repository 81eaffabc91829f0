"""Listening TCP sockets on every configured address that works: one policy for every port we open.

A box without IPv6 (or with an address gone) still serves on the others; only when no address at
all can be bound does the port fail. trio sets IPV6_V6ONLY, so "0.0.0.0" and "::" share a port.
"""

from __future__ import annotations

import errno
import logging

import trio

log = logging.getLogger("appliance.net")


class ListenError(OSError):
    """A port that could not be opened on any address; str() says why and what to do (`serve`
    prints it as one line instead of a traceback)."""


async def open_listeners(hosts: list[str], port: int, purpose: str) -> list[trio.SocketListener]:
    listeners: list[trio.SocketListener] = []
    errors: list[OSError] = []
    for host in hosts:
        try:
            listeners += await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            log.warning("cannot listen for %s on [%s]:%d: %s", purpose, host, port, exc)
            errors.append(exc)
    if not listeners:
        reasons = "; ".join(sorted({exc.strerror or str(exc) for exc in errors})) or "no address to listen on"
        raise ListenError(f"could not listen for {purpose} on port {port} ({', '.join(hosts)}): "
                          f"{reasons}{_hint(errors)}")
    return listeners


def _hint(errors: list[OSError]) -> str:
    codes = {exc.errno for exc in errors}
    if errno.EADDRINUSE in codes:
        return ". Another program holds it: is the appliance already running? Stop that one, or choose " \
               "other ports in the configuration"
    if errno.EACCES in codes:
        return ". Ports below 1024 need root or the CAP_NET_BIND_SERVICE capability"
    if errno.EADDRNOTAVAIL in codes:
        return ". No such address on this machine: check `listen` in the configuration"
    return ""
