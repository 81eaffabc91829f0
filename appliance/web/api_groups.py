"""The group routes of the HTTP API: `GET /api/v1/groups`, `GET|PUT|DELETE /api/v1/groups/{name}`.

Built on web/api.py (bearer key, JSON body reader with its size limit, JSON errors) and the store's
groups (store/groups.py), which `appliance group` and the admin page change too. `PUT` sets a
group's whole member list, creating the group if needed (201) or replacing it (200): a script can
send the list it wants without reading first. Members are user names or bare JIDs on this domain.
"""

from __future__ import annotations

from typing import Any

from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance.proto.jid import JID, InvalidJID
from appliance.store import groups
from appliance.web.api import PREFIX, ApiError, context, read_json, require_key


async def list_groups(request: Request) -> Response:
    require_key(request)
    listed = context(request).server.db.read(groups.list_groups)
    return JSONResponse({"groups": [{"name": name, "members": members} for name, members in listed]})


class Group(HTTPEndpoint):
    """`/v1/groups/{name}`: one endpoint for its methods, so that a 405 names all of them in Allow."""

    async def get(self, request: Request) -> Response:
        require_key(request)
        name = request.path_params["name"]
        members = context(request).server.db.read(groups.group_members, name)
        if members is None:
            raise _no_such_group(name)
        return JSONResponse({"name": name, "members": members})

    async def put(self, request: Request) -> Response:
        require_key(request)
        name = request.path_params["name"]
        _check_name(name)
        api = context(request)
        members = _members(await read_json(request), api.config.domain)
        try:
            created = await api.server.db.write(groups.set_members, name, members)
        except groups.GroupError as exc:  # the name was checked: only unknown users are left
            raise ApiError(404, "not-found", str(exc)) from None
        body = {"name": name, "members": sorted(set(members))}
        if created:
            return JSONResponse(body, status_code=201, headers={"Location": f"{PREFIX}/v1/groups/{name}"})
        return JSONResponse(body)

    async def delete(self, request: Request) -> Response:
        require_key(request)
        name = request.path_params["name"]
        if not await context(request).server.db.write(groups.delete_group, name):
            raise _no_such_group(name)
        return Response(status_code=204)


def _check_name(name: str) -> None:
    try:
        groups.check_group_name(name)
    except groups.GroupError as exc:
        raise ApiError(400, "invalid-request", str(exc)) from None


def _members(data: Any, domain: str) -> list[str]:
    """`{"members": [...]}` -> the local parts; 400 for another shape, 404 for another domain."""
    if not isinstance(data, dict) or set(data) != {"members"} or not isinstance(data["members"], list):
        raise ApiError(400, "invalid-request", 'the body must be {"members": ["name", ...]}')
    return [_local_part(member, domain) for member in data["members"]]


def _local_part(member: object, domain: str) -> str:
    if not isinstance(member, str):
        raise ApiError(400, "invalid-request", "members must be strings (user names or JIDs)")
    try:
        jid = JID.parse(member if "@" in member else f"{member}@{domain}")
    except InvalidJID as exc:
        raise ApiError(400, "invalid-request", f"bad user name {member!r}: {exc}") from None
    if jid.local is None or jid.resource is not None or jid.domain != domain:
        raise ApiError(404, "not-found", f"{member!r} is not a user of {domain}")
    return jid.local


def _no_such_group(name: str) -> ApiError:
    return ApiError(404, "not-found", f"there is no group {name!r}")


def group_routes() -> list[Route]:
    """Relative to the API's mount point (/api)."""
    return [
        Route("/v1/groups", list_groups, methods=["GET"]),
        Route("/v1/groups/{name}", Group),
    ]
