"""Invites in SQLite (table `invites`, schema migration 5); the model is appliance/pairing/invites.py.

`redeem` checks and counts a use in the caller's write transaction, so a registration and the use
of its token commit together or not at all: a token is consumed only when the account exists.
"""

from __future__ import annotations

import sqlite3

from appliance.pairing.invites import Invite

_COLUMNS = "token, kind, inviter, username, max_uses, uses, created, expires, revoked, admin, reset"


class InviteUnusable(Exception):
    """The token names no invite, or one that is revoked, expired or used up; str() says which."""


def _invite(row: tuple) -> Invite:
    token, kind, inviter, username, max_uses, uses, created, expires, revoked, admin, reset = row
    return Invite(token, kind, inviter, username, max_uses, uses, created, expires, bool(revoked), bool(admin),
                  bool(reset))


def insert_invite(conn: sqlite3.Connection, invite: Invite) -> None:
    conn.execute(
        f"INSERT INTO invites ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (invite.token, invite.kind, invite.inviter, invite.username, invite.max_uses, invite.uses,
         invite.created, invite.expires, int(invite.revoked), int(invite.admin), int(invite.reset)),
    )


def get_invite(conn: sqlite3.Connection, token: str) -> Invite | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM invites WHERE token = ?", (token,)).fetchone()
    return _invite(row) if row else None


def usable_invite(conn: sqlite3.Connection, token: str, now: float) -> Invite:
    """The invite, if it can be used now; else InviteUnusable saying why."""
    invite = get_invite(conn, token)
    if invite is None:
        raise InviteUnusable("unknown")
    problem = invite.problem(now)
    if problem is not None:
        raise InviteUnusable(problem)
    return invite


def redeem(conn: sqlite3.Connection, token: str, now: float) -> Invite:
    """Count one use (inside the caller's write transaction); the invite as it was before."""
    invite = usable_invite(conn, token, now)
    conn.execute("UPDATE invites SET uses = uses + 1 WHERE token = ?", (token,))
    return invite


def revoke(conn: sqlite3.Connection, token: str) -> bool:
    """False if there is no such invite."""
    return conn.execute("UPDATE invites SET revoked = 1 WHERE token = ?", (token,)).rowcount > 0


def list_invites(conn: sqlite3.Connection, now: float, include_unusable: bool = False) -> list[Invite]:
    """Newest first; only those still usable unless `include_unusable`."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM invites ORDER BY created DESC, token").fetchall()
    invites = [_invite(row) for row in rows]
    return invites if include_unusable else [i for i in invites if i.problem(now) is None]


def delete_unusable(conn: sqlite3.Connection, now: float, older_than: float) -> int:
    """Forget invites that can no longer be used and stopped being usable before `older_than`
    (expired long ago, revoked, used up); their landing pages then say "unknown"."""
    return conn.execute(
        "DELETE FROM invites WHERE created < ? AND (revoked = 1 OR (expires IS NOT NULL AND expires < ?)"
        " OR (max_uses > 0 AND uses >= max_uses))", (older_than, min(now, older_than)),
    ).rowcount


def set_admin(conn: sqlite3.Connection, username: str, admin: bool = True) -> bool:
    return conn.execute("UPDATE users SET admin = ? WHERE username = ?", (int(admin), username)).rowcount > 0


def is_admin(conn: sqlite3.Connection, username: str) -> bool:
    row = conn.execute("SELECT admin FROM users WHERE username = ?", (username,)).fetchone()
    return bool(row and row[0])


def count_users(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM users").fetchone()[0]
