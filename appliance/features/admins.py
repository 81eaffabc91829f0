"""Who is an administrator: one answer for every feature (ad-hoc commands, later the admin page).

An administrator is named in `config.admins` (a bare JID or a localpart) or has `users.admin = 1`
(an admin invite made them one). Not a feature with routes: a helper features call.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from appliance.core.server import Server
from appliance.proto.jid import JID, InvalidJID, normalise_local
from appliance.store import invites

log = logging.getLogger("appliance.admins")


def is_admin(server: Server, username: str) -> bool:
    """Is the local account `username` (a normalised localpart) an administrator?"""
    if username in _configured(tuple(server.config.admins), server.domain):
        return True
    return server.db.read(invites.is_admin, username)


def is_local_admin(server: Server, jid: JID) -> bool:
    """Is `jid` (any resource) an administrator of this server?"""
    return jid.domain == server.domain and jid.local is not None and is_admin(server, jid.local)


@lru_cache(maxsize=8)
def _configured(entries: tuple[str, ...], domain: str) -> frozenset[str]:
    """The localparts `config.admins` names on this domain, normalised as logins are. Cached, so a
    bad entry is reported once, not on every check."""
    names: set[str] = set()
    for entry in entries:
        try:
            jid = JID.parse(entry) if "@" in entry else JID(normalise_local(entry), domain)
        except InvalidJID as exc:
            log.warning("ignoring admins entry %r: %s", entry, exc)
            continue
        if jid.domain != domain or jid.local is None or jid.resource is not None:
            log.warning("ignoring admins entry %r: not an account of %s", entry, domain)
            continue
        names.add(jid.local)
    return frozenset(names)
