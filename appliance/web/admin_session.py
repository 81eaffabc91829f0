"""Admin page sessions: who is signed in, their CSRF token, and the sign-in throttle.

A session is a random id in a cookie (HttpOnly, SameSite=Strict, Path=/admin, Secure over HTTPS)
that maps to the signed-in administrator in this process's memory only: a restart signs everyone
out, which is acceptable for a box with a handful of administrators and means no session secret
ever touches the disk. Every POST must carry the session's CSRF token in a hidden field; the
SameSite cookie already keeps other sites' forms out, the token also covers old browsers.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from appliance.config import Admin
from appliance.core.auth import SlidingWindow

COOKIE = "appliance_admin"
COOKIE_PATH = "/admin"


@dataclass
class AdminSession:
    username: str
    csrf: str
    expires: float          # time.monotonic() deadline
    notice: str = ""        # what the last POST did, shown once on the page it redirected to


class Sessions:
    """Signed-in administrators by session id, and failed sign-ins by client address."""

    def __init__(self, settings: Admin) -> None:
        self.lifetime = settings.session_hours * 3600
        self.failures = SlidingWindow(settings.sign_in_failures_per_address, settings.sign_in_window)
        self._by_id: dict[str, AdminSession] = {}

    def start(self, username: str) -> tuple[str, AdminSession]:
        self._forget_expired()
        session_id = secrets.token_urlsafe(32)
        session = AdminSession(username, secrets.token_urlsafe(32), time.monotonic() + self.lifetime)
        self._by_id[session_id] = session
        return session_id, session

    def of(self, request: Request) -> AdminSession | None:
        """The request's live session, or None (no cookie, unknown id, expired)."""
        session = self._by_id.get(request.cookies.get(COOKIE, ""))
        if session is None or session.expires <= time.monotonic():
            return None
        return session

    def end(self, request: Request) -> None:
        self._by_id.pop(request.cookies.get(COOKIE, ""), None)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for session_id in [k for k, s in self._by_id.items() if s.expires <= now]:
            del self._by_id[session_id]


def csrf_ok(session: AdminSession, submitted: object) -> bool:
    return isinstance(submitted, str) and hmac.compare_digest(submitted.encode(), session.csrf.encode())


def set_cookie(response: Response, request: Request, session_id: str, lifetime: float) -> None:
    response.set_cookie(COOKIE, session_id, max_age=int(lifetime), path=COOKIE_PATH, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
