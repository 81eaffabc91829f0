"""sd_notify(3) for the image's Type=notify unit: the real server as a subprocess, with a real
datagram socket standing where systemd's would be (appliance/net/sdnotify.py)."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import ServerProcess


@pytest.fixture
def systemd_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket as systemd opens one (short path: Unix socket paths stop at 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def received(sock: socket.socket, seconds: float) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except socket.timeout:
            pass
    return messages


def test_ready_after_the_listeners_then_watchdog_then_stopping(tmp_path: Path, systemd_socket) -> None:
    sock, path = systemd_socket
    server = ServerProcess(tmp_path / "a", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "300000"})
    server.start()  # returns once both c2s ports accept
    try:
        messages = received(sock, 1.5)
        assert messages[0] == f"READY=1\nSTATUS=serving {server.domain}"
        # ready only once the first-start invite is out (a console login prompt waits for it)
        assert "No account exists yet" in server.log_text()
        # every 0.15 s (half of WATCHDOG_USEC) while the event loop runs
        assert 5 <= messages.count("WATCHDOG=1") <= 12, messages
    finally:
        assert server.stop() == 0
    assert "STOPPING=1" in received(sock, 0.5)


def test_a_watchdog_meant_for_another_process_is_left_alone(tmp_path: Path, systemd_socket) -> None:
    sock, path = systemd_socket
    server = ServerProcess(tmp_path / "a", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000",
                                                "WATCHDOG_PID": "1"})
    server.start()
    try:
        assert received(sock, 1.0) == [f"READY=1\nSTATUS=serving {server.domain}"]
    finally:
        server.stop()


def test_an_abstract_socket_name_is_understood(tmp_path: Path) -> None:
    name = f"appliance-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(0.2)
        server = ServerProcess(tmp_path / "a", env={"NOTIFY_SOCKET": "@" + name})
        server.start()
        try:
            assert received(sock, 0.5)[:1] == [f"READY=1\nSTATUS=serving {server.domain}"]
        finally:
            server.stop()


def test_an_unusable_notify_socket_is_logged_and_the_server_serves(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "a", env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    server.start()
    try:
        assert server.logged("cannot notify systemd (READY=1)")
        assert server.proc is not None and server.proc.poll() is None
    finally:
        assert server.stop() == 0
