"""An invite as text for a terminal or the box's console: the xmpp: URI, the landing page, what
the invite allows and until when, and a QR code a phone can scan off the screen.

Shared by `appliance invite` and the administrator invite `serve` prints at first start, so both
say the same things the same way.
"""

from __future__ import annotations

import time

from appliance.config import Config
from appliance.pairing import links, qr
from appliance.pairing.invites import CONTACT, Invite, invite_uri


def addresses(invite: Invite, config: Config, fingerprint: str) -> tuple[str, str | None]:
    """The invite's xmpp: URI (with the certificate pin) and its landing page (None: HTTP off)."""
    return invite_uri(invite, config.domain, fingerprint), links.landing_url(config, invite.token)


def when(timestamp: float) -> str:
    """'2026-12-24 06:30 UTC': unambiguous on a box whose local time zone nobody set."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def span(seconds: float) -> str:
    """A rough duration for people: '30 days', '11 hours', '25 minutes'."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "less than a minute"


def expiry(invite: Invite, now: float) -> str:
    if invite.expires is None:
        return "never expires"
    if invite.expires <= now:
        return f"expired {when(invite.expires)}"
    return f"expires {when(invite.expires)} (in {span(invite.expires - now)})"


def uses(invite: Invite) -> str:
    if invite.max_uses == 0:
        return "unlimited uses" if not invite.uses else f"used {invite.uses} times, unlimited uses"
    if invite.max_uses == 1:
        return "single use" if not invite.uses else "used"
    return f"used {invite.uses} of {invite.max_uses} times"


def kind(invite: Invite) -> str:
    """'contact invite from alice', 'administrator account invite for bob', 'account invite'."""
    if invite.kind == CONTACT:
        return f"contact invite from {invite.inviter}"
    what = "administrator account invite" if invite.admin else "account invite"
    return f"{what} for {invite.username}" if invite.username else what


def summary(invite: Invite, now: float) -> str:
    return f"{kind(invite)}, {uses(invite)}, {expiry(invite, now)}"


def printout(invite: Invite, uri: str, landing: str | None, now: float, *, with_qr: bool) -> str:
    """The lines `appliance invite create|show` print, and the middle of the first-start notice."""
    lines = [uri]
    if landing:
        lines.append(f"web page: {landing}")
    lines.append(summary(invite, now))
    text = "\n".join(lines) + "\n"
    return text + qr.terminal(uri) if with_qr else text
