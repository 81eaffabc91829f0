"""The starlette application: every web route of the appliance, and what all responses share.

Served by appliance/net/http.py inside the appliance's own process. Routes today: the invite
landing pages (web/invite_page.py); the admin page and the notification API add theirs here.
Every response gets the headers below unless its route set its own: nothing on these pages may
be cached (an invite's page holds its token) or leak its URL to another site.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.config import Config
from appliance.core.server import Server
from appliance.pairing.fingerprint import fingerprint_sha256
from appliance.web.admin_pages import admin_routes
from appliance.web.api import api_routes
from appliance.web.invite_page import InvitePages
from appliance.web.layout import CONTENT_SECURITY_POLICY, message_page

DEFAULT_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}


class DefaultHeaders:
    """ASGI middleware adding DEFAULT_HEADERS to every HTTP response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in DEFAULT_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeaderLimit:
    """ASGI middleware: a request whose line and headers exceed `[http] max_header_bytes` gets 431.
    (hypercorn's own limit, h11's, bounds only what it buffers of an *incomplete* request: a large
    header block that arrives in one read would pass it.)"""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_bytes:
                await message_page(431, "Request too large", "The request's headers are too large.")(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


class AdminOverHttps:
    """ASGI middleware: while HTTPS is on, the admin page is served over it only. A request for
    /admin over plain HTTP is redirected (308) to the same path on the HTTPS port, so an
    administrator's password never crosses the LAN in clear text. The browser warns once about
    the self-signed certificate; its fingerprint is on every invite page to compare with."""

    def __init__(self, app: ASGIApp, tls_port: int) -> None:
        self.app, self.tls_port = app, tls_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and self.tls_port and scope.get("scheme") == "http"
                and (scope["path"] == "/admin" or scope["path"].startswith("/admin/"))):
            url = Request(scope).url
            host = url.hostname or "localhost"
            if ":" in host:
                host = f"[{host}]"
            target = url.replace(scheme="https", netloc=f"{host}:{self.tls_port}")
            await RedirectResponse(str(target), status_code=308)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _not_found(request: Request, exc: Exception) -> Response:
    return message_page(404, "Not found", "There is no page at this address.")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return message_page(405, "Method not allowed", f"This page does not answer {request.method} requests.",
                        headers=headers)


def build_app(server: Server, config: Config) -> Starlette:
    invites = InvitePages(server, config, fingerprint_sha256(config.cert_path))
    routes = invites.routes() + api_routes(server, config) + admin_routes(server, config)
    return Starlette(routes=routes, middleware=[Middleware(DefaultHeaders),
                                                Middleware(HeaderLimit, max_bytes=config.http.max_header_bytes),
                                                Middleware(AdminOverHttps, tls_port=config.http.tls_port)],
                     exception_handlers={404: _not_found, 405: _method_not_allowed})
