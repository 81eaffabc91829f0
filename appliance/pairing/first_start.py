"""First start: a box without any account prints an administrator invite, so the first phone can
be paired by scanning the console or the terminal, with no command typed.

The invite lives in the database like any other. While there is still no account, every start
shows the same one again (an unused single-use administrator invite made by an admin, this one or
one from `appliance invite create --admin`) instead of piling up new ones; a new one is made only
when none is usable any more. Once an account exists, nothing is printed. It is single-use and
lasts FIRST_START_DAYS: long enough for a box that is set up days after it was first switched on.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time

from appliance.core.server import Server
from appliance.pairing import printout
from appliance.pairing.invites import ACCOUNT, Invite, new_invite
from appliance.store import invites as store

log = logging.getLogger("appliance.pairing")

FIRST_START_DAYS = 30
ANOTHER = "To make another administrator invite: appliance invite create --admin"


def pending_admin_invite(conn: sqlite3.Connection, now: float) -> Invite | None:
    """In one write transaction: None once an account exists; else the usable first-start
    invite, made now if there is none."""
    if store.count_users(conn):
        return None
    for invite in store.list_invites(conn, now):
        if _first_account_invite(invite):
            return invite
    invite = new_invite(ACCOUNT, inviter=None, now=now, ttl=FIRST_START_DAYS * 86400.0, admin=True)
    store.insert_invite(conn, invite)
    return invite


def _first_account_invite(invite: Invite) -> bool:
    return (invite.kind == ACCOUNT and invite.admin and invite.inviter is None
            and invite.username is None and invite.max_uses == 1)


async def announce(server: Server, fingerprint: str) -> None:
    """Print (stdout) and log (WARNING) the first-start invite, if the database has no account.
    Started after the listeners are up: the invite must work when someone scans it."""
    now = time.time()
    invite = await server.db.write(pending_admin_invite, now)
    if invite is None:
        return
    uri, landing = printout.addresses(invite, server.config, fingerprint)
    body = printout.printout(invite, uri, landing, now, with_qr=True)
    try:
        print(f"\nNo account exists yet. Scan this administrator invite with an XMPP app (Conversations,"
              f" Monal, Snikket...) to create the first account:\n{body}{ANOTHER}\n",
              file=sys.stdout, flush=True)
    except (OSError, UnicodeError) as exc:  # no usable standard output (a daemon): the log has it
        log.warning("cannot print the first-start invite on standard output: %s", exc)
    log.warning("no account yet: administrator invite %s%s; %s; QR code on standard output. %s",
                uri, f"; web page {landing}" if landing else "", printout.summary(invite, now), ANOTHER)
