"""The invite landing page: `/invite/TOKEN` (with or without a trailing slash) and its QR images.

What a phone shows after someone opens an invite link (docs/pairing.md, "The invite landing page"):
who invited, the QR of the xmpp: URI (stock clients act on the URI itself), "Open in app", app
store links, and what manual set-up needs, the certificate's fingerprint included. Conversations
(and Snikket) also read the page without rendering it: a HEAD request and the first `<...>` of
the `Link` header, so that header carries the xmpp: URI. Google Play hands the `referrer` of the
store link to the freshly installed Conversations, which then continues with the invite.

A token that cannot be used gets a 404 page saying only whether it is unknown or no longer valid;
a token that cannot be one (wrong length or characters) gets the same 404 without a database read.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from string import Template
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from appliance.config import Config
from appliance.core.server import Server
from appliance.pairing import qr
from appliance.pairing.invites import CONTACT, Invite, invite_uri
from appliance.pairing.links import public_host
from appliance.store.invites import InviteUnusable, usable_invite
from appliance.web.layout import Markup, join, message_page, page, render

# pairing.invites.new_token: 18 random bytes in URL-safe base64, 24 characters.
TOKEN = re.compile(r"[A-Za-z0-9_-]{24}")

# Store pages checked against Prosody's mod_register_apps and the projects' own links.
CONVERSATIONS_PLAY = "https://play.google.com/store/apps/details?id=eu.siacs.conversations"
CONVERSATIONS_FDROID = "https://f-droid.org/packages/eu.siacs.conversations/"
MONAL_APP_STORE = "https://apps.apple.com/app/id317711500"

UNKNOWN = ("Invite not found",
           "This invite link is not known here. Check that the whole link was copied, "
           "or ask the person who invited you for a new one.")
NO_LONGER_VALID = ("Invite no longer valid",
                   "This invite has expired, was withdrawn or has been used up. "
                   "Ask the person who invited you for a new one.")

_HEAD = Template('<link rel="alternate" href="$uri">\n')
_BODY = Template("""<h1>$title</h1>
<p>$lead</p>
<img class="qr" src="$qr_svg" alt="QR code of this invite" width="320" height="320">
<a class="button" href="$uri">Open in app</a>
<p class="note">On another phone? Scan the code with a chat app, or
<a href="$qr_png">download it as a picture</a>.</p>
<h2>No chat app yet?</h2>
<ul>
<li><a href="$play">Conversations on Google Play</a> (Android; picks up this invite once installed)</li>
<li><a href="$fdroid">Conversations on F-Droid</a> (Android)</li>
<li><a href="$monal">Monal on the App Store</a> (iPhone and iPad)</li>
</ul>
<p>Then come back to this page and tap <b>Open in app</b>.</p>
<h2>Manual set-up</h2>
<dl>
$rows</dl>
<p class="note">This box lives on your own network, so no public authority vouches for its
certificate: your app will ask whether to trust it. Accept only if the fingerprint it shows
is the one above.</p>""")
_ROW = Template("<dt>$label</dt><dd>$value</dd>\n")
_FINGERPRINT_ROW = Template('<dt>$label</dt><dd class="fingerprint">$value</dd>\n')


@dataclass
class InvitePages:
    server: Server
    config: Config
    fingerprint: str            # "AB:CD:..." of the certificate the XMPP listeners use

    def routes(self) -> list[Route]:
        return [Route("/invite/{token}", self.landing, methods=["GET"]),
                Route("/invite/{token}/", self.landing, methods=["GET"]),
                Route("/invite/{token}/qr.png", self.qr_png, methods=["GET"]),
                Route("/invite/{token}/qr.svg", self.qr_svg, methods=["GET"])]

    def _find(self, token: str) -> Invite:
        """The invite, if usable now; else InviteUnusable ("unknown" for what cannot be a token)."""
        if not TOKEN.fullmatch(token):
            raise InviteUnusable("unknown")
        return self.server.db.read(usable_invite, token, time.time())

    def _qr_uri(self, request: Request) -> str:
        try:
            return self._uri(self._find(request.path_params["token"]))
        except InviteUnusable:
            raise HTTPException(404) from None

    def _uri(self, invite: Invite) -> str:
        return invite_uri(invite, self.config.domain, self.fingerprint)

    async def landing(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            invite = self._find(token)
        except InviteUnusable as exc:
            heading, text = UNKNOWN if str(exc) == "unknown" else NO_LONGER_VALID
            return message_page(404, heading, text)
        uri = self._uri(invite)
        # Relative image links, so the page also works under a proxy's path prefix (http.public_url).
        base = "" if request.url.path.endswith("/") else f"{token}/"
        title = f"Invite to {self.config.domain}"
        body = render(_BODY, title=title, lead=self._lead(invite), uri=uri, qr_svg=f"{base}qr.svg",
                      qr_png=f"{base}qr.png", play=f"{CONVERSATIONS_PLAY}&referrer={quote(uri, safe='')}",
                      fdroid=CONVERSATIONS_FDROID, monal=MONAL_APP_STORE, rows=self._manual_rows(invite))
        return HTMLResponse(page(title, body, render(_HEAD, uri=uri)),
                            headers={"Link": f'<{uri}>; rel="alternate"', "Access-Control-Expose-Headers": "Link"})

    async def qr_png(self, request: Request) -> Response:
        return Response(qr.png(self._qr_uri(request)), media_type="image/png")

    async def qr_svg(self, request: Request) -> Response:
        return Response(qr.svg(self._qr_uri(request)), media_type="image/svg+xml")

    def _lead(self, invite: Invite) -> str:
        domain = self.config.domain
        if invite.kind == CONTACT:
            return f"{invite.inviter}@{domain} invited you to chat."
        if invite.reset:
            return f"This invite sets a new password for {invite.username}@{domain}."
        lead = f"You are invited to create an account on {domain}."
        return f"{lead} Your address will be {invite.username}@{domain}." if invite.username else lead

    def _manual_rows(self, invite: Invite) -> Markup:
        domain, config = self.config.domain, self.config
        if invite.kind == CONTACT:
            rows = [("Contact to add", f"{invite.inviter}@{domain}"), ("Your account on", domain)]
        elif invite.username:
            rows = [("Your address", f"{invite.username}@{domain}")]
        else:
            rows = [("Your account on", f"{domain} (you choose the username)")]
        rows += [("Host", public_host(config)),
                 ("Port", f"{config.c2s_port} (STARTTLS) or {config.c2s_tls_port} (direct TLS)")]
        fingerprint = render(_FINGERPRINT_ROW, label="Certificate SHA-256", value=readable(self.fingerprint))
        return join([*(render(_ROW, label=label, value=value) for label, value in rows), fingerprint,
                     render(_ROW, label="Invite valid until", value=expiry(invite.expires))])


def readable(fingerprint: str) -> str:
    """'AB:CD:EF:01:...' as groups of four hex digits, easier to read aloud and compare."""
    digits = fingerprint.replace(":", "").upper()
    return " ".join(digits[i:i + 4] for i in range(0, len(digits), 4))


def expiry(expires: float | None) -> str:
    if expires is None:
        return "no expiry date"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
