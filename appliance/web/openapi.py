"""The OpenAPI 3.1 description of the HTTP API, served at `GET /api/v1/openapi.json` without a key.

Written by hand, next to the routes it describes (web/api.py, web/api_groups.py, web/api_users.py);
the limits come from the running configuration, so a client generator sees the real maximum title
length and body size. tests/test_api_errors.py checks that every route the app has under /api/ is described here
and nothing else, so this file cannot silently fall behind the code.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance import __version__
from appliance.config import Config
from appliance.web.api import context

JSON = "application/json"
_ERROR_STATUSES = {
    "400": "Invalid request: malformed JSON, a bad field or value (the reason says which)",
    "401": "No, unknown or revoked API key (with WWW-Authenticate: Bearer)",
    "403": "This key may not do this (removing accounts is for the local key of `appliance user del`)",
    "404": "No such notification, group or user",
    "413": "The request body is larger than [notifications] max_request_bytes",
    "415": "The request body is not application/json",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(schema)}}}


def _answer(description: str, schema: str | None = None, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema:
        answer["content"] = {JSON: {"schema": _ref(schema)}}
    if headers:
        answer["headers"] = {name: {"schema": {"type": "string"}} for name in headers}
    return answer


def _operation(summary: str, answers: dict[str, dict], errors: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    """One operation; every keyed operation can also answer 401."""
    responses = dict(answers)
    for status in ("401", *errors):
        responses[status] = _answer(_ERROR_STATUSES[status], "Error")
    return {"summary": summary, "responses": responses, **extra}


def _path_parameter(name: str, schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": schema}]


GROUP_NAME = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}


def _paths() -> dict[str, Any]:
    notification_id = _path_parameter("id", {"type": "integer", "minimum": 0})
    group_name = _path_parameter("name", GROUP_NAME)
    body_errors = ("400", "404", "413", "415")
    return {
        "/api/v1/notifications": {
            "post": _operation("Send a notification", {
                "201": _answer("Stored and being delivered; its status", "NotificationStatus", ("Location",))},
                body_errors, requestBody=_json_body("NotificationRequest")),
            "get": _operation("The most recent notifications, newest first",
                              {"200": _answer("Their statuses", "NotificationList")}, ()),
        },
        "/api/v1/notifications/{id}": {
            "get": _operation("A notification's delivery status",
                              {"200": _answer("Its status", "NotificationStatus")}, ("404",),
                              parameters=notification_id),
        },
        "/api/v1/groups": {
            "get": _operation("Every group with its members", {"200": _answer("The groups", "GroupList")}, ()),
        },
        "/api/v1/groups/{name}": {
            "get": _operation("A group's members", {"200": _answer("The group", "Group")}, ("404",),
                              parameters=group_name),
            "put": _operation("Create a group or replace its members", {
                "200": _answer("Members replaced", "Group"),
                "201": _answer("Group created", "Group", ("Location",))},
                body_errors, parameters=group_name, requestBody=_json_body("GroupMembers")),
            "delete": _operation("Delete a group (not its users)", {"204": _answer("Deleted")}, ("404",),
                                 parameters=group_name),
        },
        "/api/v1/users/{name}": {
            "delete": _operation("Remove an account and close its sessions (the local key only)",
                                 {"204": _answer("Removed")}, ("403", "404"),
                                 parameters=_path_parameter("name", {"type": "string"})),
        },
        "/api/v1/openapi.json": {
            "get": {"summary": "This description", "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {}}}}},
        },
    }


def _audience_schema() -> dict[str, Any]:
    def one(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "required": [name], "additionalProperties": False, "properties": {name: schema}}
    return {"description": "Who gets it; recipients are fixed when it is created", "oneOf": [
        one("users", {"type": "array", "items": {"type": "string"}, "minItems": 1,
                      "description": "user names or bare JIDs on this domain"}),
        one("group", GROUP_NAME),
        one("everyone", {"const": True}),
        one("online", {"const": True}),
    ]}


def _schemas(config: Config) -> dict[str, Any]:
    limits = config.notifications
    priority = {"type": "string", "enum": ["low", "normal", "high", "urgent"], "default": "normal"}
    time = {"type": ["string", "null"], "format": "date-time"}
    return {
        "Error": {"type": "object", "required": ["error", "reason"], "properties": {
            "error": {"type": "string", "description": "short code, e.g. unauthorized, not-found"},
            "reason": {"type": "string", "description": "a sentence for people"}}},
        "NotificationRequest": {"type": "object", "required": ["title", "to"], "additionalProperties": False,
                                "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": limits.max_title_chars},
            "body": {"type": "string", "maxLength": limits.max_body_chars, "default": ""},
            "link": {"type": "string", "format": "uri", "description": "http(s); sent as XEP-0066 data"},
            "priority": priority,
            "ttl": {"type": "number", "exclusiveMinimum": 0, "maximum": limits.max_ttl_days * 86400,
                    "description": f"seconds; default {limits.default_ttl_hours:g} hours"},
            "to": _audience_schema()}},
        "NotificationStatus": {"type": "object", "properties": {
            "id": {"type": "integer"}, "created": time, "expires": time, "title": {"type": "string"},
            "priority": priority, "to": _audience_schema(),
            "recipients": {"type": "integer"}, "delivered": {"type": "integer"},
            "pending": {"type": "integer", "description": "recipients - delivered"},
            "expired": {"type": "boolean"}}},
        "NotificationList": {"type": "object", "properties": {
            "notifications": {"type": "array", "items": _ref("NotificationStatus")}}},
        "Group": {"type": "object", "properties": {
            "name": GROUP_NAME, "members": {"type": "array", "items": {"type": "string"}}}},
        "GroupList": {"type": "object", "properties": {"groups": {"type": "array", "items": _ref("Group")}}},
        "GroupMembers": {"type": "object", "required": ["members"], "additionalProperties": False,
                         "properties": {"members": {"type": "array", "items": {"type": "string"}}}},
    }


def openapi_document(config: Config) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Chat appliance API ({config.domain})", "version": __version__,
                 "description": "Notifications, groups, and account removal for the local CLI; "
                                "docs/notifications.md. Request bodies at most "
                                f"{config.notifications.max_request_bytes} bytes."},
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {"schemas": _schemas(config),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "`appliance apikey create NAME`"}}},
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi_document(context(request).config))


def openapi_routes() -> list[Route]:
    """Relative to the API's mount point (/api)."""
    return [Route("/v1/openapi.json", openapi_json, methods=["GET"])]
