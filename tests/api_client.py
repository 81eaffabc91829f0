"""A tiny client of the appliance's HTTP API for tests: real HTTP over a socket (http.client)."""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from tests.harness import ServerProcess, free_port, wait_for_port


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Api:
    server: ServerProcess
    port: int
    key: str | None = None

    def request(self, method: str, path: str, body: Any = None, *, key: str | None = None,
                raw: bytes | Iterable[bytes] | None = None, headers: dict[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        sent = dict(headers or {})
        if (key or self.key) is not None:
            sent.setdefault("Authorization", f"Bearer {key or self.key}")
        data: Any = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=sent, encode_chunked=raw is not None and
                         not isinstance(raw, bytes))
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def notify(self, to: dict[str, Any], title: str = "Door open", **fields: Any) -> dict[str, Any]:
        reply = self.request("POST", "/api/v1/notifications", {"title": title, "to": to, **fields})
        assert reply.status == 201, reply.body
        assert reply.headers["Location"] == f"/api/v1/notifications/{reply.json['id']}"
        return reply.json

    def status(self, notification_id: int) -> dict[str, Any]:
        reply = self.request("GET", f"/api/v1/notifications/{notification_id}")
        assert reply.status == 200, reply.body
        return reply.json

    def wait_status(self, notification_id: int, done: Callable[[dict[str, Any]], bool],
                    timeout: float = 10.0) -> dict[str, Any]:
        """Poll GET until `done(status)`; the last status either way (the caller asserts)."""
        deadline = time.monotonic() + timeout
        while not done(status := self.status(notification_id)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return status


def web_server(data: Any, settings: dict[str, object] | None = None) -> tuple[ServerProcess, int]:
    """A started server with the web server on a free port (no HTTPS)."""
    port = free_port()
    server = ServerProcess(data, settings={"http.enabled": True, "http.port": port, "http.tls_port": 0,
                                           **(settings or {})})
    server.start()
    assert server.proc is not None
    wait_for_port(port, server.proc)
    return server, port


def create_key(server: ServerProcess, name: str) -> str:
    result = server.cli("apikey", "create", name, "--json")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["name"] == name
    return created["key"]


@contextlib.contextmanager
def database(server: ServerProcess) -> Iterator[sqlite3.Connection]:
    """The running server's database (WAL: reading beside it is safe), committing on success."""
    conn = sqlite3.connect(server.data / "appliance.sqlite3")
    conn.execute("PRAGMA foreign_keys = ON")
    try:
        with conn:
            yield conn
    finally:
        conn.close()
