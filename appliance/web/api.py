"""The HTTP API under /api/ (docs/notifications.md): bearer keys, JSON in and out, JSON errors.

Mounted by web/app.py as a starlette app of its own, so that everything under /api/ answers in
JSON, 404 and 405 included, never with an HTML page. Every route calls `require_key(request)`
first: `Authorization: Bearer KEY` with a key made by `appliance apikey create`, else 401 with
`WWW-Authenticate: Bearer` and a JSON reason. Errors are `{"error": code, "reason": sentence}`.
Request bodies are read through `read_json`, which stops at `[notifications] max_request_bytes`
while reading (413) instead of buffering whatever a client sends.

The notification routes are here; other route sets (web/api_groups.py) are added in `api_routes`
and use the same helpers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from appliance.config import Config
from appliance.core.server import Server
from appliance.features.notifications import (Audience, DeliveryStatus, NotificationRejected, NotificationRequest,
                                               audience_json, delivery_status, recent_notifications,
                                               send_notification)
from appliance.store import api_keys

PREFIX = "/api"
TOUCH_EVERY = 60.0      # seconds between two writes of a key's last_used
_ERROR_CODES = {400: "invalid-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
                405: "method-not-allowed", 413: "too-large", 422: "unprocessable"}
_FIELDS = {"title", "body", "link", "priority", "ttl", "to"}


class ApiError(Exception):
    """Raised by a route or a helper; answered with json_error."""

    def __init__(self, status: int, code: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.headers = status, code, reason, headers


@dataclass
class ApiContext:
    server: Server
    config: Config
    touched: dict[str, float] = field(default_factory=dict)   # key name -> last write of last_used


def json_error(status: int, code: str, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "reason": reason}, status_code=status, headers=headers)


def context(request: Request) -> ApiContext:
    return request.app.state.api


def require_key(request: Request) -> str:
    """The name of the request's valid API key; ApiError 401 otherwise."""
    api = context(request)
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthorized("this API needs an 'Authorization: Bearer KEY' header; "
                            "`appliance apikey create NAME` makes a key")
    key = api.server.db.read(api_keys.match_key, secret.strip())
    if key is None:
        raise _unauthorized("this API key is not known here")
    if key.revoked:
        raise _unauthorized(f"the API key {key.name!r} was revoked")
    now = time.time()
    if now - api.touched.get(key.name, 0.0) >= TOUCH_EVERY:
        api.touched[key.name] = now
        api.server.db.write_soon(api_keys.touch, key.name, now, TOUCH_EVERY)
    return key.name


def _unauthorized(reason: str) -> ApiError:
    return ApiError(401, "unauthorized", reason, {"WWW-Authenticate": 'Bearer realm="appliance"'})


async def read_json(request: Request) -> Any:
    """The request body as JSON, read no further than max_request_bytes (413 beyond)."""
    _require_json_type(request)
    limit = context(request).config.notifications.max_request_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed-json", "the request body is not valid JSON") from None


def _require_json_type(request: Request) -> None:
    """415 for a body declared as something else (curl -d sends a form); none declared is read as JSON."""
    declared = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if declared and declared != "application/json" and not declared.endswith("+json"):
        raise ApiError(415, "unsupported-media-type",
                       f"the request body must be application/json, not {declared}")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too-large", f"the request body is larger than {limit} bytes")


def timestamp(when: float | None) -> str | None:
    """Times in the API: ISO 8601 in UTC, to the second."""
    if when is None:
        return None
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_json(status: DeliveryStatus) -> dict[str, Any]:
    return {"id": status.id, "created": timestamp(status.created), "expires": timestamp(status.expires),
            "title": status.title, "priority": status.priority, "to": audience_json(status.audience),
            "recipients": status.recipients, "delivered": status.delivered, "pending": status.pending,
            "expired": status.expired}


# ---- the notification routes -------------------------------------------------------------------

async def create_notification(request: Request) -> Response:
    sender = require_key(request)
    data = await read_json(request)
    try:
        status = await send_notification(context(request).server, notification_request(data, sender))
    except NotificationRejected as exc:
        raise ApiError(exc.status, _ERROR_CODES.get(exc.status, "invalid-request"), str(exc)) from None
    return JSONResponse(status_json(status), status_code=201,
                        headers={"Location": f"{PREFIX}/v1/notifications/{status.id}"})


async def show_notification(request: Request) -> Response:
    require_key(request)
    notification_id = request.path_params["id"]
    status = delivery_status(context(request).server, notification_id) if notification_id < 2**63 else None
    if status is None:
        raise ApiError(404, "not-found", f"there is no notification {request.path_params['id']}")
    return JSONResponse(status_json(status))


async def list_notifications(request: Request) -> Response:
    require_key(request)
    return JSONResponse({"notifications": [status_json(s) for s in recent_notifications(context(request).server)]})


def notification_request(data: Any, sender: str) -> NotificationRequest:
    """The POST body as a NotificationRequest; NotificationRejected for a bad shape (the values
    themselves are checked by send_notification)."""
    if not isinstance(data, dict):
        raise NotificationRejected("the request body must be a JSON object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise NotificationRejected(f"unknown fields: {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    if "title" not in data:
        raise NotificationRejected("a notification needs a title")
    ttl = data.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))):
        raise NotificationRejected("ttl must be a number of seconds")
    body = data.get("body")
    return NotificationRequest(title=data["title"], body="" if body is None else body, link=data.get("link"),
                               priority=data.get("priority", "normal"), ttl_seconds=ttl,
                               audience=audience(data.get("to")), sender=sender)


def audience(to: Any) -> Audience:
    """`{"users": [..]}`, `{"group": "x"}`, `{"everyone": true}` or `{"online": true}`."""
    if not isinstance(to, dict) or len(to) != 1:
        raise NotificationRejected('"to" must be one of {"users": [..]}, {"group": "name"}, '
                                   '{"everyone": true} or {"online": true}')
    kind, value = next(iter(to.items()))
    if kind == "users" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return Audience("users", tuple(value))
    if kind == "group" and isinstance(value, str):
        return Audience("group", (value,))
    if kind in ("everyone", "online") and value is True:
        return Audience(kind)
    raise NotificationRejected(f'bad "to": {{"{kind}": ...}}; use {{"users": ["name", ..]}}, '
                               '{"group": "name"}, {"everyone": true} or {"online": true}')


# ---- the app ---------------------------------------------------------------------------------

async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_error(exc.status, exc.code, exc.reason, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = "no such API route" if exc.status_code == 404 else f"this route does not answer {request.method}"
    return json_error(exc.status_code, _ERROR_CODES.get(exc.status_code, "error"), reason, exc.headers)


async def _notifications(request: Request) -> Response:
    handler = create_notification if request.method == "POST" else list_notifications
    return await handler(request)


def api_routes(server: Server, config: Config) -> list[BaseRoute]:
    """Everything under /api/, for build_app."""
    routes = [
        # One route for both methods, so a 405 there lists both in Allow.
        Route("/v1/notifications", _notifications, methods=["GET", "POST"]),
        Route("/v1/notifications/{id:int}", show_notification, methods=["GET"]),
    ]
    from appliance.web import api_groups, api_users, openapi  # here: they import this module's helpers
    routes += api_groups.group_routes() + api_users.user_routes() + openapi.openapi_routes()
    app = Starlette(routes=routes, exception_handlers={ApiError: _api_error, HTTPException: _http_error})
    app.state.api = ApiContext(server, config)
    return [Mount(PREFIX, app=app)]
