"""The invite landing page of a real server process, over plain HTTP and HTTPS, and in headless Chromium.

Invites are written into the server's database file with the store's own functions (as
`appliance invite` does); the server reads them on each request. One check runs the app in
process, on a closed database, to show that a malformed token is refused before any read.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest

from appliance.app import build_server
from appliance.config import Config
from appliance.net.certs import ensure_certificate, fingerprint_sha256
from appliance.pairing.invites import ACCOUNT, CONTACT, Invite, invite_uri, new_invite
from appliance.store.db import Database
from appliance.store.invites import insert_invite, revoke
from appliance.web.app import build_app
from tests.api_client import Reply
from tests.harness import DOMAIN, ServerProcess, env_without_proxies, free_port, wait_for_port
from tests.zbar import decode, needs_zbarimg

ARTIFACTS = Path(__file__).parent / "artifacts"
PUBLIC_HOST = "chat.example.net"
UNKNOWN_TEXT = "This invite link is not known here"
INVALID_TEXT = "This invite has expired, was withdrawn or has been used up"
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="chromium is missing: install Debian's chromium (scripts/test.sh does)")


@dataclass
class Web:
    server: ServerProcess
    port: int
    tls_port: int

    @contextlib.contextmanager
    def database(self) -> Iterator[sqlite3.Connection]:
        """The server's database file, for one transaction committed at the end."""
        with contextlib.closing(sqlite3.connect(self.server.data / "appliance.sqlite3")) as conn, conn:
            yield conn

    def add(self, invite: Invite) -> Invite:
        with self.database() as conn:
            insert_invite(conn, invite)
        return invite

    def uri(self, invite: Invite) -> str:
        return invite_uri(invite, DOMAIN, fingerprint_sha256(self.server.cert))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, path: str, method: str = "GET", conn: http.client.HTTPConnection | None = None) -> Reply:
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    port, tls_port = free_port(), free_port()
    server = ServerProcess(tmp_path_factory.mktemp("web"), settings={
        "http.enabled": True, "http.port": port, "http.tls_port": tls_port, "public_host": PUBLIC_HOST})
    server.start()
    assert server.proc is not None
    wait_for_port(port, server.proc)
    wait_for_port(tls_port, server.proc)
    yield Web(server, port, tls_port)
    server.stop()


def contact_invite(web: Web, max_uses: int = 1) -> Invite:
    return web.add(new_invite(CONTACT, inviter="alice", now=time.time(), max_uses=max_uses))


def assert_page_headers(reply: Reply, uri: str) -> None:
    assert reply.headers["Link"] == f'<{uri}>; rel="alternate"'
    assert reply.headers["Access-Control-Expose-Headers"] == "Link"
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Referrer-Policy"] == "no-referrer"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in reply.headers["Content-Security-Policy"]
    assert "script-src" not in reply.headers["Content-Security-Policy"]


@pytest.mark.parametrize("slash", ["", "/"])
def test_contact_invite_page(web: Web, slash: str) -> None:
    invite = contact_invite(web)
    uri = web.uri(invite)
    reply = web.request(f"/invite/{invite.token}{slash}")
    assert reply.status == 200
    assert_page_headers(reply, uri)
    page = reply.text
    assert f"<title>Invite to {DOMAIN}</title>" in page
    assert f'<link rel="alternate" href="{uri}">' in page
    assert f"alice@{DOMAIN} invited you to chat." in page
    assert f'<a class="button" href="{uri}">Open in app</a>' in page
    qr_path = "qr.svg" if slash else f"{invite.token}/qr.svg"
    assert f'src="{qr_path}"' in page
    referrer = quote(uri, safe="")
    assert f"https://play.google.com/store/apps/details?id=eu.siacs.conversations&amp;referrer={referrer}" in page
    assert "https://f-droid.org/packages/eu.siacs.conversations/" in page
    assert "https://apps.apple.com/app/id317711500" in page


def test_account_invite_page_and_manual_setup(web: Web) -> None:
    invite = web.add(new_invite(ACCOUNT, inviter=None, username="bob", now=time.time(), ttl=3600))
    reply = web.request(f"/invite/{invite.token}")
    assert reply.status == 200
    assert_page_headers(reply, web.uri(invite))
    page = reply.text
    assert f"You are invited to create an account on {DOMAIN}. Your address will be bob@{DOMAIN}." in page
    assert f"<dt>Your address</dt><dd>bob@{DOMAIN}</dd>" in page
    assert f"<dt>Host</dt><dd>{PUBLIC_HOST}</dd>" in page
    assert f"<dd>{web.server.port} (STARTTLS) or {web.server.tls_port} (direct TLS)</dd>" in page
    digits = fingerprint_sha256(web.server.cert).replace(":", "")
    grouped = " ".join(digits[i:i + 4] for i in range(0, 64, 4))
    assert f'<dd class="fingerprint">{grouped}</dd>' in page
    assert time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(invite.expires)) in page
    assert "will ask whether to trust it" in page


def test_password_reset_invite_page_says_so(web: Web) -> None:
    invite = web.add(replace(new_invite(ACCOUNT, inviter=None, username="carol", now=time.time()), reset=True))
    page = web.request(f"/invite/{invite.token}").text
    assert f"This invite sets a new password for carol@{DOMAIN}." in page
    assert "create an account" not in page


def test_inserted_values_are_escaped(web: Web) -> None:
    invite = web.add(new_invite(CONTACT, inviter="<i>eve", now=time.time()))
    page = web.request(f"/invite/{invite.token}").text
    assert "<i>eve" not in page and f"&lt;i&gt;eve@{DOMAIN} invited you to chat." in page


def test_the_log_shows_a_token_shortened(web: Web) -> None:
    invite = contact_invite(web)
    assert web.request(f"/invite/{invite.token}/qr.svg").status == 200
    assert web.server.logged(f"GET /invite/{invite.token[:4]}.../qr.svg 200")
    assert invite.token not in web.server.log_text()


def test_head_gives_the_headers_without_a_body(web: Web) -> None:
    invite = contact_invite(web)
    get, head = web.request(f"/invite/{invite.token}"), web.request(f"/invite/{invite.token}", "HEAD")
    assert head.status == 200 and head.body == b""
    assert_page_headers(head, web.uri(invite))
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.body))


@needs_zbarimg
def test_png_qr_decodes_to_the_uri(web: Web, tmp_path: Path) -> None:
    invite = contact_invite(web, max_uses=0)
    reply = web.request(f"/invite/{invite.token}/qr.png")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/png"
    (tmp_path / "qr.png").write_bytes(reply.body)
    assert decode(tmp_path / "qr.png") == web.uri(invite)


def test_svg_qr(web: Web) -> None:
    invite = contact_invite(web)
    reply = web.request(f"/invite/{invite.token}/qr.svg")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/svg+xml"
    assert reply.body.lstrip().startswith(b"<svg") and reply.headers["X-Content-Type-Options"] == "nosniff"


def unusable_invites(web: Web) -> dict[str, Invite]:
    now = time.time()
    revoked = contact_invite(web)
    with web.database() as conn:
        assert revoke(conn, revoked.token)
    return {"expired": web.add(new_invite(CONTACT, inviter="alice", now=now - 7200, ttl=3600)),
            "revoked": revoked,
            "used up": web.add(new_invite(CONTACT, inviter="alice", now=now).used_once()),
            "unknown": new_invite(CONTACT, inviter="alice", now=now)}  # never stored


def test_unusable_invites_get_404(web: Web) -> None:
    for reason, invite in unusable_invites(web).items():
        reply = web.request(f"/invite/{invite.token}")
        assert reply.status == 404, reason
        assert (UNKNOWN_TEXT if reason == "unknown" else INVALID_TEXT) in reply.text, reason
        assert "Link" not in reply.headers and invite.token not in reply.text, reason
        for image in ("qr.png", "qr.svg"):
            assert web.request(f"/invite/{invite.token}/{image}").status == 404, (reason, image)


def test_a_usable_invite_stops_working_when_used_up(web: Web) -> None:
    invite = contact_invite(web)
    assert web.request(f"/invite/{invite.token}").status == 200
    with web.database() as conn:
        conn.execute("UPDATE invites SET uses = 1 WHERE token = ?", (invite.token,))
    assert web.request(f"/invite/{invite.token}").status == 404


@pytest.mark.parametrize("token", ["short", "A" * 25, "A" * 23 + ".", "A" * 23 + "%C3%A9"])
def test_malformed_tokens_get_404(web: Web, token: str) -> None:
    reply = web.request(f"/invite/{token}")
    assert reply.status == 404 and UNKNOWN_TEXT in reply.text


async def test_malformed_tokens_are_refused_before_any_database_read(tmp_path: Path) -> None:
    """In process, on a closed database: any read would raise, so a 404 means none was tried."""
    config = Config(domain=DOMAIN, data_dir=tmp_path)
    ensure_certificate(config.cert_path, config.key_path, DOMAIN)
    db = Database.open(config.database_path)
    app = build_app(build_server(config, db), config)
    db.close()
    assert await asgi_get(app, "/invite/" + "A" * 23 + ".") == 404
    with pytest.raises(RuntimeError, match="is closed"):  # a well-formed token is looked up
        await asgi_get(app, "/invite/" + "A" * 24)


async def asgi_get(app: Any, path: str) -> int:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "root_path": "",
               "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http"}, receive, send)
    return sent[0]["status"]


def test_other_paths_and_methods(web: Web) -> None:
    missing = web.request("/no-such-page")
    assert missing.status == 404 and "There is no page at this address." in missing.text
    assert missing.headers["Content-Type"] == "text/html; charset=utf-8"
    wrong = web.request(f"/invite/{contact_invite(web).token}", "POST")
    assert wrong.status == 405 and "does not answer POST requests" in wrong.text
    assert set(wrong.headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


def test_https_with_the_server_certificate(web: Web) -> None:
    invite = contact_invite(web)
    context = ssl.create_default_context(cafile=str(web.server.cert))
    context.set_alpn_protocols(["h2", "http/1.1"])
    conn = http.client.HTTPSConnection("127.0.0.1", web.tls_port, context=context, timeout=10)
    conn.connect()
    assert conn.sock.selected_alpn_protocol() == "http/1.1"
    reply = web.request(f"/invite/{invite.token}", conn=conn)
    assert reply.status == 200
    assert_page_headers(reply, web.uri(invite))


def test_the_admin_page_is_served_over_https_only(web: Web) -> None:
    plain = web.request("/admin/login?next=1")
    assert plain.status == 308
    assert plain.headers["Location"] == f"https://127.0.0.1:{web.tls_port}/admin/login?next=1"
    context = ssl.create_default_context(cafile=str(web.server.cert))
    secure = web.request("/admin/login", conn=http.client.HTTPSConnection("127.0.0.1", web.tls_port,
                                                                          context=context, timeout=10))
    assert secure.status == 200 and "Sign in" in secure.text
    assert web.request("/invite/unknown-token-here").status == 404  # other pages stay on plain HTTP


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-proxy-server",
               f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=390,844", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env_without_proxies())
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@needs_chromium
@needs_zbarimg
def test_chromium_renders_the_page_with_its_qr(web: Web, tmp_path: Path) -> None:
    invite = contact_invite(web)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "invite-page-390x844.png"
    screenshot.unlink(missing_ok=True)
    chromium(tmp_path, f"--screenshot={screenshot}", web.url(f"/invite/{invite.token}"))
    # Only a QR image that loaded and rendered on the phone-sized screen decodes.
    assert decode(screenshot) == web.uri(invite)


@needs_chromium
def test_chromium_dom_has_the_title_and_the_link(web: Web, tmp_path: Path) -> None:
    invite = contact_invite(web)
    dom = chromium(tmp_path, "--dump-dom", web.url(f"/invite/{invite.token}/")).stdout
    uri = web.uri(invite)
    assert f"<title>Invite to {DOMAIN}</title>" in dom
    assert f'<a class="button" href="{uri}">Open in app</a>' in dom
    assert f'<link rel="alternate" href="{uri}">' in dom


def test_stops_promptly_with_a_client_connected(fresh_server: ServerProcess) -> None:
    port = free_port()
    fresh_server.settings = {"http.enabled": True, "http.port": port, "http.tls_port": 0}
    fresh_server.start()
    assert fresh_server.proc is not None
    wait_for_port(port, fresh_server.proc)
    assert fresh_server.logged(f"serving {DOMAIN}")  # SIGTERM is handled from here on
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.connect()  # an open connection that never sends its request
    try:
        started = time.monotonic()
        assert fresh_server.stop(timeout=10) == 0
        assert time.monotonic() - started < 2.5
    finally:
        idle.close()


def test_http_limits_oversized_headers_and_idle_connections(fresh_server: ServerProcess) -> None:
    port = free_port()
    fresh_server.settings = {"http.enabled": True, "http.port": port, "http.tls_port": 0,
                             "http.max_header_bytes": 4096, "http.idle_timeout": 1.0}
    fresh_server.start()
    assert fresh_server.proc is not None
    wait_for_port(port, fresh_server.proc)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as big:
        big.sendall(b"GET /invite/x HTTP/1.1\r\nHost: box\r\nX-Padding: " + b"a" * 8000 + b"\r\n\r\n")
        answer = _read_until_closed(big)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        started = time.monotonic()
        assert _read_until_closed(silent) == b""  # closed by the server, nothing sent
        assert time.monotonic() - started < 5


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
