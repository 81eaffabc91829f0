"""API keys and the API framework of a real server process: `appliance apikey`, bearer auth over
real HTTP, JSON errors for unknown routes and methods, and the request body limit while reading."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from typing import Iterator

import pytest

from tests.api_client import Api, create_key, database, web_server
from tests.harness import ServerProcess

BODY_LIMIT = 2000


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server, port = web_server(tmp_path_factory.mktemp("apikeys"), {"notifications.max_request_bytes": BODY_LIMIT})
    try:
        server.add_user("alice")
        yield Api(server, port)
    finally:
        server.stop()


def keys(server: ServerProcess) -> dict[str, dict]:
    result = server.cli("apikey", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {key["name"]: key for key in json.loads(result.stdout)}


def assert_unauthorized(api: Api, key: str | None, reason: str) -> None:
    reply = api.request("GET", "/api/v1/notifications", key=key) if key else \
        Api(api.server, api.port).request("GET", "/api/v1/notifications")
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json["error"] == "unauthorized"
    assert reason in reply.json["reason"]


def test_a_created_key_works_and_only_its_hash_is_stored(api: Api) -> None:
    key = create_key(api.server, "doorbell")
    assert len(key) == 43 and "=" not in key   # 32 bytes, URL-safe base64
    assert api.request("GET", "/api/v1/notifications", key=key).status == 200
    with database(api.server) as conn:
        stored = conn.execute("SELECT secret_hash FROM api_keys WHERE name = 'doorbell'").fetchone()[0]
    assert stored == hashlib.sha256(key.encode()).digest()
    for path in api.server.data.glob("appliance.sqlite3*"):   # the WAL too
        assert key.encode() not in path.read_bytes()


def test_missing_wrong_and_revoked_keys_get_401(api: Api) -> None:
    key = create_key(api.server, "shop")
    assert_unauthorized(api, None, "Authorization: Bearer KEY")
    assert_unauthorized(api, key[:-2] + "xx", "not known")
    reply = api.request("GET", "/api/v1/notifications", headers={"Authorization": f"Basic {key}"})
    assert reply.status == 401
    result = api.server.cli("apikey", "revoke", "shop")
    assert result.returncode == 0 and "revoked API key 'shop'" in result.stdout
    assert_unauthorized(api, key, "revoked")
    assert keys(api.server)["shop"]["revoked"] is True
    again = api.server.cli("apikey", "revoke", "shop")
    assert again.returncode == 0 and "already" in again.stdout


def test_last_used_is_recorded(api: Api) -> None:
    key = create_key(api.server, "cron")
    assert keys(api.server)["cron"]["last_used"] is None
    assert api.request("GET", "/api/v1/notifications", key=key).status == 200
    deadline = time.monotonic() + 5
    while keys(api.server)["cron"]["last_used"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert keys(api.server)["cron"]["last_used"] is not None


def test_cli_refuses_bad_and_taken_names(api: Api) -> None:
    create_key(api.server, "taken")
    taken = api.server.cli("apikey", "create", "taken")
    assert taken.returncode == 2 and "exists already" in taken.stderr
    bad = api.server.cli("apikey", "create", "no spaces")
    assert bad.returncode == 2 and "bad key name" in bad.stderr
    unknown = api.server.cli("apikey", "revoke", "nobody")
    assert unknown.returncode == 1 and "no API key named 'nobody'" in unknown.stderr
    plain = api.server.cli("apikey", "create", "plain")
    assert plain.returncode == 0 and "shown only now" in plain.stdout


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    api.key = create_key(api.server, "routes")
    missing = api.request("GET", "/api/v1/nothing")
    assert (missing.status, missing.json["error"]) == (404, "not-found")
    wrong = api.request("DELETE", "/api/v1/notifications")
    assert (wrong.status, wrong.json["error"]) == (405, "method-not-allowed")
    assert api.request("GET", "/api/v1/notifications/99999").json["error"] == "not-found"


def test_body_limit_by_content_length_and_while_reading(api: Api) -> None:
    key = create_key(api.server, "big")
    body = json.dumps({"title": "x", "body": "y" * BODY_LIMIT, "to": {"everyone": True}}).encode()
    declared = api.request("POST", "/api/v1/notifications", key=key, raw=body)
    assert (declared.status, declared.json["error"]) == (413, "too-large")
    # Chunked, no Content-Length: the server can only find out by reading, and stops there.
    chunked = api.request("POST", "/api/v1/notifications", key=key, raw=iter([body[:1000], body[1000:]]))
    assert (chunked.status, chunked.json["error"]) == (413, "too-large")
    assert str(BODY_LIMIT) in chunked.json["reason"]
    small = api.request("POST", "/api/v1/notifications", key=key,
                        raw=iter([b'{"title": "x", ', b'"to": {"users": ["alice"]}}']))
    assert small.status == 201, small.body


def test_key_names_appear_as_the_sender(api: Api) -> None:
    key = create_key(api.server, "sender-check")
    reply = api.request("POST", "/api/v1/notifications", {"title": "hi", "to": {"users": ["alice"]}}, key=key)
    assert reply.status == 201
    with database(api.server) as conn:
        sender = conn.execute("SELECT sender FROM notifications WHERE id = ?", (reply.json["id"],)).fetchone()[0]
    assert sender == "sender-check"


def test_an_oversized_body_is_refused_before_it_ends(api: Api) -> None:
    """The 413 comes while the client is still sending: the server stopped reading at the limit."""
    key = create_key(api.server, "endless")
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(f"POST /api/v1/notifications HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                     "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b'{"title": "' + b"x" * (BODY_LIMIT + 500)
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))   # and never the last chunk
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
