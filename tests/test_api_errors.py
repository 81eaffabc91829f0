"""Every error case of the HTTP API, over real HTTP against a real server process: the status, the
JSON `{"error", "reason"}` body and its content type; and the OpenAPI description, which must name
exactly the routes the app has under /api/."""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import pytest
from starlette.endpoints import HTTPEndpoint
from starlette.routing import Mount, Route

from appliance.app import build_server
from appliance.config import Config
from appliance.net.certs import ensure_certificate
from appliance.store.db import Database
from appliance.web.app import build_app
from tests.api_client import Api, create_key, web_server
from tests.harness import DOMAIN

BODY_LIMIT = 4000
MAX_TTL_DAYS = 10  # above the default time-to-live (a week)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server, port = web_server(tmp_path_factory.mktemp("apierrors"), {
        "notifications.max_request_bytes": BODY_LIMIT, "notifications.max_ttl_days": MAX_TTL_DAYS})
    try:
        server.add_user("alice")
        api = Api(server, port)
        api.key = create_key(server, "errors")
        assert api.request("PUT", "/api/v1/groups/staff", {"members": ["alice"]}).status == 201
        yield api
    finally:
        server.stop()


def assert_error(reply: Any, status: int, code: str, reason: str) -> None:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json["error"] == code
    assert reason in reply.json["reason"], reply.json["reason"]


def notification(**fields: Any) -> dict[str, Any]:
    return {"title": "Door open", "to": {"users": ["alice"]}, **fields}


@pytest.mark.parametrize("header, reason", [
    (None, "needs an 'Authorization: Bearer KEY' header"),
    ("Bearer not-a-key-of-this-server", "this API key is not known here"),
    ("Basic YWxpY2U6cHc=", "needs an 'Authorization: Bearer KEY' header"),
], ids=["no key", "bad key", "other scheme"])
@pytest.mark.parametrize("method, path", [("GET", "/api/v1/notifications"), ("GET", "/api/v1/groups"),
                                          ("PUT", "/api/v1/groups/x"), ("DELETE", "/api/v1/groups/staff")])
def test_without_a_valid_key_401(api: Api, header: str | None, reason: str, method: str, path: str) -> None:
    reply = Api(api.server, api.port).request(
        method, path, {"members": []} if method == "PUT" else None,
        headers={"Authorization": header} if header else None)
    assert_error(reply, 401, "unauthorized", reason)
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.request("GET", "/api/v1/groups/staff").json["members"] == ["alice"]  # nothing changed


def test_a_revoked_key_401(api: Api) -> None:
    key = create_key(api.server, "to-revoke")
    assert api.request("GET", "/api/v1/groups", key=key).status == 200
    assert api.server.cli("apikey", "revoke", "to-revoke").returncode == 0
    assert_error(api.request("GET", "/api/v1/groups", key=key), 401, "unauthorized", "was revoked")


@pytest.mark.parametrize("body, status, code, reason", [
    (notification(to={"users": ["zoe"]}), 404, "not-found", "zoe"),
    (notification(to={"users": ["alice@elsewhere.example"]}), 404, "not-found", "is not a user of"),
    (notification(to={"group": "nobody-here"}), 404, "not-found", "no such group: nobody-here"),
    (notification(ttl=0), 400, "invalid-request", "ttl"),
    (notification(ttl=-5), 400, "invalid-request", "ttl"),
    (notification(ttl=MAX_TTL_DAYS * 86400 + 1), 400, "invalid-request", "ttl"),
    (notification(ttl="2h"), 400, "invalid-request", "ttl must be a number of seconds"),
    (notification(to={"everyone": True, "online": True}), 400, "invalid-request", '"to" must be one of'),
    ({"to": {"everyone": True}}, 400, "invalid-request", "needs a title"),
    (notification(colour="red"), 400, "invalid-request", "unknown fields: colour"),
    ([1, 2], 400, "invalid-request", "must be a JSON object"),
], ids=["unknown user", "user of another domain", "unknown group", "ttl 0", "negative ttl", "ttl too long",
        "ttl not a number", "two audiences", "no title", "unknown field", "not an object"])
def test_bad_notifications(api: Api, body: Any, status: int, code: str, reason: str) -> None:
    assert_error(api.request("POST", "/api/v1/notifications", body), status, code, reason)


def test_malformed_json_400(api: Api) -> None:
    reply = api.request("POST", "/api/v1/notifications", raw=b'{"title": "Door open", "to": ',
                        headers={"Content-Type": "application/json"})
    assert_error(reply, 400, "malformed-json", "not valid JSON")
    reply = api.request("PUT", "/api/v1/groups/staff", raw=b"members=alice",
                        headers={"Content-Type": "application/json"})
    assert_error(reply, 400, "malformed-json", "not valid JSON")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_415(api: Api, content_type: str) -> None:
    body = json.dumps(notification()).encode()
    reply = api.request("POST", "/api/v1/notifications", raw=body,
                        headers={"Content-Type": content_type})
    assert_error(reply, 415, "unsupported-media-type", f"must be application/json, not {content_type}")
    ok = api.request("POST", "/api/v1/notifications", raw=body,
                     headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status == 201, ok.body


def test_oversized_body_413(api: Api) -> None:
    """A real body of more than max_request_bytes, declared and chunked."""
    body = json.dumps(notification(body="x" * BODY_LIMIT)).encode()
    assert len(body) > BODY_LIMIT
    declared = api.request("POST", "/api/v1/notifications", raw=body, headers={"Content-Type": "application/json"})
    assert_error(declared, 413, "too-large", f"larger than {BODY_LIMIT} bytes")
    members = json.dumps({"members": ["alice"] * 1000}).encode()
    chunked = api.request("PUT", "/api/v1/groups/staff", raw=iter([members[:100], members[100:]]),
                          headers={"Content-Type": "application/json"})
    assert_error(chunked, 413, "too-large", f"larger than {BODY_LIMIT} bytes")


def test_expired_notification_shows_expired(api: Api) -> None:
    """alice is offline: it stays pending until its time-to-live runs out, then shows expired."""
    created = api.notify({"users": ["alice"]}, ttl=1)
    assert (created["expired"], created["pending"]) == (False, 1)
    time.sleep(1.5)
    status = api.status(created["id"])
    assert (status["expired"], status["pending"], status["delivered"]) == (True, 1, 0)


@pytest.mark.parametrize("method, path, allowed", [
    ("DELETE", "/api/v1/notifications", "GET, POST"),
    ("PUT", "/api/v1/notifications/1", "GET"),
    ("POST", "/api/v1/groups", "GET"),
    ("POST", "/api/v1/groups/staff", "DELETE, GET, PUT"),
    ("POST", "/api/v1/openapi.json", "GET"),
])
def test_wrong_method_405(api: Api, method: str, path: str, allowed: str) -> None:
    reply = api.request(method, path)
    assert_error(reply, 405, "method-not-allowed", f"does not answer {method}")
    assert set(reply.headers["Allow"].split(", ")) >= set(allowed.split(", "))


@pytest.mark.parametrize("path", ["/api/v1/nothing", "/api/v2/notifications", "/api/", "/api/v1/notifications/x"])
def test_unknown_route_404(api: Api, path: str) -> None:
    assert_error(api.request("GET", path), 404, "not-found", "no such API route")


@pytest.mark.parametrize("method, path, body, status, reason", [
    ("GET", "/api/v1/groups/nobody", None, 404, "there is no group 'nobody'"),
    ("DELETE", "/api/v1/groups/nobody", None, 404, "there is no group 'nobody'"),
    ("PUT", "/api/v1/groups/bad%20name", {"members": []}, 400, "bad group name 'bad name'"),
    ("PUT", "/api/v1/groups/" + "g" * 65, {"members": []}, 400, "bad group name"),
    ("PUT", "/api/v1/groups/staff", {"members": ["alice", "zoe", "yann"]}, 404, "no such user: yann, zoe"),
    ("PUT", "/api/v1/groups/staff", {"members": ["bob@elsewhere.example"]}, 404, "is not a user of"),
    ("PUT", "/api/v1/groups/staff", {"members": "alice"}, 400, '{"members": ["name", ...]}'),
    ("PUT", "/api/v1/groups/staff", {"members": [], "admins": []}, 400, '{"members": ["name", ...]}'),
    ("PUT", "/api/v1/groups/staff", {"members": [7]}, 400, "members must be strings"),
], ids=["get unknown", "delete unknown", "bad name", "long name", "unknown users", "other domain",
        "members not a list", "extra field", "member not a string"])
def test_bad_group_requests(api: Api, method: str, path: str, body: Any, status: int, reason: str) -> None:
    code = "not-found" if status == 404 else "invalid-request"
    assert_error(api.request(method, path, body), status, code, reason)
    assert api.request("GET", "/api/v1/groups/staff").json["members"] == ["alice"]  # nothing changed


def test_openapi_is_served_without_a_key(api: Api) -> None:
    reply = Api(api.server, api.port).request("GET", "/api/v1/openapi.json")
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    document = reply.json
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == f"Chat appliance API ({DOMAIN})"
    schema = document["components"]["schemas"]["NotificationRequest"]["properties"]
    assert schema["ttl"]["maximum"] == MAX_TTL_DAYS * 86400   # the running configuration's limits
    assert str(BODY_LIMIT) in document["info"]["description"]
    assert document["paths"]["/api/v1/openapi.json"]["get"]["security"] == []


def app_api_routes(tmp_path: Any) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the real app has under /api/, HEAD aside."""
    config = Config(domain=DOMAIN, data_dir=tmp_path)
    ensure_certificate(config.cert_path, config.key_path, DOMAIN)
    with Database.open(config.database_path) as db:
        app = build_app(build_server(config, db), config)
    found: set[tuple[str, str]] = set()

    def walk(routes: list, prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(route.routes, prefix + route.path)
            elif isinstance(route, Route):
                path = prefix + route.path.replace(":int", "")
                found.update((m.lower(), path) for m in route_methods(route) if m != "HEAD")
    walk(app.routes, "")
    return {(method, path) for method, path in found if path.startswith("/api/")}


def route_methods(route: Route) -> set[str]:
    """A function route's methods, or those an HTTPEndpoint class defines."""
    if isinstance(route.endpoint, type) and issubclass(route.endpoint, HTTPEndpoint):
        return {m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if hasattr(route.endpoint, m.lower())}
    return set(route.methods or ())


def test_openapi_describes_every_api_route_and_no_other(api: Api, tmp_path: Any) -> None:
    document = Api(api.server, api.port).request("GET", "/api/v1/openapi.json").json
    described = {(method, path) for path, operations in document["paths"].items() for method in operations}
    routes = app_api_routes(tmp_path)
    assert len(routes) >= 7
    assert described == routes
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["summary"] and operation["responses"], (method, path)
            if operation.get("security") != []:
                assert "401" in operation["responses"], (method, path)
