"""systemd's service notifications (sd_notify(3)) for the image's appliance.service (Type=notify,
WatchdogSec=): READY=1 once every listener accepts, WATCHDOG=1 from the event loop itself, so a loop
that hangs stops answering and systemd restarts the service, and STOPPING=1 at a clean stop.

Outside systemd (no NOTIFY_SOCKET) every call does nothing. The protocol is one datagram on a Unix
socket per message, so no library: a dependency for ten lines would also have to be frozen into the
binary.
"""

from __future__ import annotations

import logging
import os
import socket

import trio

log = logging.getLogger("appliance.sdnotify")


def _socket_address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    return "\0" + address[1:] if address.startswith("@") else address  # "@": the abstract namespace


def notify(message: str) -> bool:
    """Send one notification; False when not under systemd or the socket refused it (logged:
    a missing notification must not stop the server, systemd's timeouts will speak for it)."""
    address = _socket_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", message.split("\n", 1)[0], exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 messages: half of what systemd allows, as sd_watchdog_enabled(3)
    advises; None when no watchdog is asked for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        return None


async def pet_watchdog(interval: float, until: trio.Event) -> None:
    """WATCHDOG=1 every `interval` until `until` is set (the server is stopping: systemd's stop
    timeout takes over). A task of the event loop: it only gets to run while the loop does."""
    while not until.is_set():
        notify("WATCHDOG=1")
        with trio.move_on_after(interval):
            await until.wait()
