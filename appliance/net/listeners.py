"""Listening TCP sockets on every configured address that works: one policy for every port we open.

A box without IPv6 (or with an address gone) still serves on the others; only when no address at
all can be bound does the port fail. trio sets IPV6_V6ONLY, so "0.0.0.0" and "::" share a port.
"""

from __future__ import annotations

import logging

import trio

log = logging.getLogger("appliance.net")


async def open_listeners(hosts: list[str], port: int, purpose: str) -> list[trio.SocketListener]:
    listeners: list[trio.SocketListener] = []
    for host in hosts:
        try:
            listeners += await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            log.warning("cannot listen for %s on [%s]:%d: %s", purpose, host, port, exc)
    if not listeners:
        raise OSError(f"could not listen on port {port} on any of {hosts}")
    return listeners
