"""The admin page under /admin: sign-in, the session guard, and the page frame (docs/notifications.md).

Administrators (features/admins.is_admin) sign in with their XMPP address or username and password,
checked against the stored SCRAM keys (core/auth.verify_password). Every other /admin page needs a
session (web/admin_session.py) and redirects to /admin/login without one; every POST needs the
session's CSRF token (403 without it). No JavaScript anywhere (the CSP allows none): plain forms,
POST then redirect then GET, and a `<meta http-equiv=refresh>` where a page must follow a count.
The sections themselves are in web/admin_pages.py.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Awaitable, Callable
from string import Template
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from appliance.config import Config
from appliance.core.auth import verify_password
from appliance.core.server import Server
from appliance.features.admins import is_admin
from appliance.proto.jid import JID, InvalidJID, normalise_local
from appliance.web.admin_session import AdminSession, Sessions, clear_cookie, csrf_ok, set_cookie
from appliance.web.layout import CONTENT_SECURITY_POLICY, Markup, join, page, render

log = logging.getLogger("appliance.admin")

MAX_FORM_BYTES = 64 * 1024

ADMIN_STYLE = """
nav{display:flex;flex-wrap:wrap;gap:.2rem .9rem;margin-bottom:.6rem;font-size:.95rem}
table{border-collapse:collapse;width:100%;font-size:.93rem}td,th{text-align:left;padding:.3rem .4rem;
border-bottom:1px solid #ddd;vertical-align:top}
form{margin:.4rem 0}label{display:block;margin:.45rem 0 .15rem;font-weight:600}
input,select,textarea{font:inherit;padding:.35rem;box-sizing:border-box;max-width:100%}
input[type=text],input[type=password],input[type=number],textarea{width:100%}
form.inline{display:inline;margin:0}.error{color:#a40b0b;font-weight:600}.notice{color:#0b6a2b;font-weight:600}
.uri{font-family:ui-monospace,monospace;overflow-wrap:anywhere;font-size:.9rem}
"""
_ADMIN_STYLE_HASH = base64.b64encode(hashlib.sha256(ADMIN_STYLE.encode()).digest()).decode()
# The invite page's policy, plus this style sheet and forms that post back to this site.
ADMIN_CSP = (CONTENT_SECURITY_POLICY.replace("form-action 'none'", "form-action 'self'")
             .replace("style-src ", f"style-src 'sha256-{_ADMIN_STYLE_HASH}' "))
HEADERS = {"Content-Security-Policy": ADMIN_CSP}
_STYLE_TAG = Markup(f"<style>{ADMIN_STYLE}</style>\n")

_FRAME = Template("""<nav><a href="/admin/status">Status</a><a href="/admin/users">Users</a>
<a href="/admin/invites">Invites</a><a href="/admin/groups">Groups</a>
<a href="/admin/notifications">Notifications</a>
<form class="inline" method="post" action="/admin/logout">$csrf<button>Sign out $user</button></form></nav>
$message<h1>$title</h1>
$body""")
_LOGIN = Template("""<h1>Sign in</h1>
$message<form method="post" action="/admin/login">
<label for="address">Address or username</label><input type="text" id="address" name="address" value="$address"
 autocomplete="username" required>
<label for="password">Password</label><input type="password" id="password" name="password"
 autocomplete="current-password" required>
<p><button>Sign in</button></p></form>
<p class="note">Administrators only. Sessions live in the server's memory: a restart signs everyone out.</p>""")
_CSRF = Template('<input type="hidden" name="csrf" value="$token">')
_CELL = Template("<td>$value</td>")
_HEAD = Template("<th>$value</th>")
_BUTTON = Template('<form class="inline" method="post" action="$action">$csrf$hidden<button>$label</button></form>')
_HIDDEN = Template('<input type="hidden" name="$name" value="$value">')
_LINK = Template('<a href="$href">$text</a>')
_ERROR = Template('<p class="error">$text</p>\n')
_NOTICE = Template('<p class="notice">$text</p>\n')


class Invalid(ValueError):
    """A form value the page refuses; str() is the message shown above the section."""


Form = dict[str, str]
Handler = Callable[[Request, AdminSession, Form], Awaitable[Response]]


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def csrf_field(session: AdminSession) -> Markup:
    return render(_CSRF, token=session.csrf)


def admin_page(session: AdminSession, title: str, body: Markup, *, status: int = 200, error: str = "",
               head: Markup = Markup("")) -> HTMLResponse:
    """A section inside the frame (navigation, sign-out), with the error or the notice left by the
    last POST shown above it."""
    notice, session.notice = session.notice, ""
    message = render(_ERROR, text=error) if error else render(_NOTICE, text=notice) if notice else Markup("")
    framed = render(_FRAME, csrf=csrf_field(session), user=session.username, message=message, title=title, body=body)
    return HTMLResponse(page(f"{title} - admin", framed, join([head, _STYLE_TAG])), status_code=status,
                        headers=HEADERS)


async def read_form(request: Request) -> Form:
    """An application/x-www-form-urlencoded body (the only kind these forms send), size-limited."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Invalid("the form is too large")
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise Invalid("the form is not UTF-8") from None


def table(headers: list[str], rows: list[list[str | Markup]]) -> Markup:
    head = join([render(_HEAD, value=h) for h in headers])
    body = [join([Markup("<tr>"), *(render(_CELL, value=v) for v in row), Markup("</tr>\n")]) for row in rows]
    return join([Markup(f"<table><tr>{head}</tr>\n"), *body, Markup("</table>")])


def button(session: AdminSession, action: str, label: str, **hidden: str) -> Markup:
    fields = join([render(_HIDDEN, name=name, value=value) for name, value in hidden.items()])
    return render(_BUTTON, action=action, csrf=csrf_field(session), hidden=fields, label=label)


def link(href: str, text: str) -> Markup:
    return render(_LINK, href=href, text=text)


def username_field(form: Form, name: str = "username", required: bool = True) -> str | None:
    value = form.get(name, "").strip()
    if not value:
        if required:
            raise Invalid(f"the {name} is missing")
        return None
    try:
        return normalise_local(value)
    except InvalidJID as exc:
        raise Invalid(f"{value!r} is not a valid username: {exc}") from None


def number_field(form: Form, name: str, low: float, high: float) -> float:
    try:
        value = float(form.get(name, "").strip())
    except ValueError:
        raise Invalid(f"{name} must be a number") from None
    if not low <= value <= high:
        raise Invalid(f"{name} must be between {low:g} and {high:g}")
    return value


class AdminSite:
    """Sign-in, sign-out and the guard every section's endpoint goes through."""

    def __init__(self, server: Server, config: Config) -> None:
        self.server, self.config = server, config
        self.sessions = Sessions(config.admin)

    def signed_in(self, handler: Handler, section: str) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint for `handler`: session required, CSRF checked on POST, Invalid shown on the
        `section` page's frame with status 400."""
        async def endpoint(request: Request) -> Response:
            session = self.sessions.of(request)
            if session is None:
                return redirect("/admin/login")
            form: Form = {}
            try:
                if request.method == "POST":
                    form = await read_form(request)
                    if not csrf_ok(session, form.get("csrf")):
                        return admin_page(session, "Refused", Markup("<p>The form was stale or forged: it lacks this "
                                          "session's token. Reload the page and try again.</p>"), status=403)
                return await handler(request, session, form)
            except Invalid as exc:
                back = Markup(f'<p><a href="{section}">Back</a></p>')
                return admin_page(session, "Not done", back, status=400, error=str(exc))
        return endpoint

    def routes(self) -> list[Route]:
        return [Route("/admin", lambda request: redirect("/admin/status"), methods=["GET"]),
                Route("/admin/login", self.login_form, methods=["GET"]),
                Route("/admin/login", self.login, methods=["POST"]),
                Route("/admin/logout", self.signed_in(self.logout, "/admin/status"), methods=["POST"])]

    async def login_form(self, request: Request) -> Response:
        if self.sessions.of(request) is not None:
            return redirect("/admin/status")
        return _login_page(200, "", "")

    async def login(self, request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        if self.sessions.failures.blocked(client):
            log.warning("admin sign-in from %s refused: too many failures", client)
            return _login_page(429, "Too many failed sign-ins from your address. Wait a few minutes.", "")
        try:
            form = await read_form(request)
        except Invalid as exc:
            return _login_page(400, str(exc), "")
        address, password = form.get("address", "").strip(), form.get("password", "")
        username = self._username(address)
        if username is None or not password or not await verify_password(self.server.db, username, password) \
                or not is_admin(self.server, username):
            self.sessions.failures.record(client)
            log.warning("admin sign-in as %r from %s failed", address[:100], client)
            return _login_page(403, "Wrong address or password, or not an administrator.", address)
        self.sessions.failures.clear(client)
        session_id, _ = self.sessions.start(username)
        log.info("%s@%s signed in to the admin page from %s", username, self.server.domain, client)
        response = redirect("/admin/status")
        set_cookie(response, request, session_id, self.sessions.lifetime)
        return response

    def _username(self, address: str) -> str | None:
        """The local account an address (user@domain) or username names; None if not one here."""
        try:
            if "@" in address:
                jid = JID.parse(address)
                return jid.local if jid.domain == self.server.domain and jid.local else None
            return normalise_local(address)
        except InvalidJID:
            return None

    async def logout(self, request: Request, session: AdminSession, form: Form) -> Response:
        self.sessions.end(request)
        response = redirect("/admin/login")
        clear_cookie(response, request)
        return response


def _login_page(status: int, error: str, address: str) -> HTMLResponse:
    message = render(_ERROR, text=error) if error else Markup("")
    body = render(_LOGIN, message=message, address=address)
    return HTMLResponse(page("Sign in - admin", body, _STYLE_TAG), status_code=status, headers=HEADERS)

