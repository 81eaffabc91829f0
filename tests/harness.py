"""Start the real appliance as a subprocess on free loopback ports, with its own data directory."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

DOMAIN = "appliance.test"
PASSWORD = "correct horse battery"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: the sockets stay bound until all are chosen (two free_port()
    calls in a row can get the same port back, and a server then fails to bind its second one)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


@dataclass
class ServerProcess:
    data: Path
    settings: dict[str, object] = field(default_factory=dict)
    domain: str = DOMAIN
    port: int = 0
    tls_port: int = 0
    proc: subprocess.Popen | None = None
    # The address the server listens on (unless settings give `listen`) and clients connect to,
    # e.g. the root side of a tests/netem.py link.
    host: str = "127.0.0.1"
    # How Python starts the server (before `serve --config ...`); a test may run it with a patch.
    python_args: list[str] = field(default_factory=lambda: ["-m", "appliance"])
    batches: Iterator[int] = field(default_factory=itertools.count)  # add_users' name suffixes
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment

    @property
    def cert(self) -> Path:
        return self.data / "tls" / "cert.pem"

    @property
    def log_path(self) -> Path:
        return self.data / "server.log"

    def write_config(self) -> Path:
        if not self.port:  # a restart keeps its ports, so clients can reconnect
            self.port, self.tls_port = free_ports(2)
        lines = [f'domain = "{self.domain}"', f'data_dir = "{self.data}"',
                 f"listen = {_toml(self.settings.get('listen', [self.host]))}",
                 f"c2s_port = {self.port}", f"c2s_tls_port = {self.tls_port}", 'log_level = "DEBUG"',
                 "scram_iterations = 4096"]
        tables: dict[str, dict[str, object]] = {}
        # No web server and no mDNS announcements on the host's network unless a test asks.
        quiet = {"http.enabled": False, "mdns.enabled": False}
        for key, value in {**quiet, **self.settings}.items():
            if key == "listen":
                continue
            if "." in key:
                table, name = key.split(".", 1)
                tables.setdefault(table, {})[name] = value
            else:
                lines.append(f"{key} = {_toml(value)}")
        for table, values in tables.items():
            lines.append(f"[{table}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        path = self.data / "appliance.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> ServerProcess:
        self.data.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, *self.python_args, "serve", "--config", str(config)],
                                     stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        wait_for_port(self.port, self.proc, host=self.host)
        wait_for_port(self.tls_port, self.proc, host=self.host)
        return self

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "appliance", *args, "--config", str(self.data / "appliance.toml")],
                              input=stdin, capture_output=True, text=True, timeout=60)

    def add_user(self, name: str, password: str = PASSWORD) -> str:
        result = self.cli("user", "add", name, stdin=password + "\n")
        assert result.returncode == 0, result.stderr
        return f"{name}@{self.domain}"

    def add_users(self, *names: str, prefix: str = "") -> list[str]:
        """Fresh accounts PREFIX+NAME+N, N new for every call (a module's server outlives its
        tests, so every test gets accounts of its own), created in parallel."""
        batch = next(self.batches)
        with ThreadPoolExecutor(len(names)) as pool:
            return list(pool.map(lambda name: self.add_user(f"{prefix}{name}{batch}"), names))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged(self, text: str, timeout: float = 5.0) -> bool:
        """Whether `text` appears in the log within `timeout`: the server often logs just after replying."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value) + '"'


def env_without_proxies() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
