"""`DELETE /api/v1/users/{name}`: remove an account while the server runs, closing its open sessions
(features/register.remove_account, as the admin page and XEP-0077 removal do).

Only the local key may call it: it is how `appliance user del` on this machine removes an account
while the server runs (commands/user.py), since a row deleted behind the server's back would leave
the account's sessions chatting until they disconnect. The keys made for scripts send
notifications and manage groups; removing accounts is not theirs to do (403).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from appliance.features.register import remove_account
from appliance.store import users
from appliance.web.api import ApiError, context, require_key
from appliance.web.local_key import LOCAL_KEY_NAME


async def delete_user(request: Request) -> Response:
    if require_key(request) != LOCAL_KEY_NAME:
        raise ApiError(403, "forbidden", "only this machine's `appliance user del` (the key in DATA_DIR/"
                                         "local-api.key) may remove accounts; other API keys may not")
    name = request.path_params["name"]
    server = context(request).server
    if not server.db.read(users.user_exists, name):
        raise ApiError(404, "not-found", f"there is no user {name!r}")
    await remove_account(server, name)
    return Response(status_code=204)


def user_routes() -> list[Route]:
    """Relative to the API's mount point (/api)."""
    return [Route("/v1/users/{name}", delete_user, methods=["DELETE"])]
