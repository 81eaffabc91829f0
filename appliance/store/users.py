"""Accounts and their SCRAM credentials (RFC 5802, RFC 7677).

Only the salted keys are stored, for every mechanism in MECHANISMS; the password itself never
reaches the database. Usernames arrive already normalised (jid.normalise_local) and are stored as
given. PBKDF2 is deliberately slow, so callers should compute `make_credentials` *before* taking the
writer (`insert_user`, `store_credentials`); `create_user` and `set_password` are conveniences for
callers that do not mind holding the write lock for the derivation.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from scramp import ScramMechanism

MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")


@dataclass(frozen=True)
class ScramCredentials:
    salt: bytes
    stored_key: bytes
    server_key: bytes
    iterations: int


Credentials = dict[str, ScramCredentials]  # mechanism name -> keys


class UserExists(Exception):
    """create_user/insert_user for a username that is already taken."""


class NoSuchUser(LookupError):
    """A per-user write (roster, offline) for a username that has no account."""


def make_credentials(password: str, iterations: int) -> Credentials:
    """Derive salted keys for every mechanism (pure, slow). scramp applies SASLprep to the password
    and raises scramp.ScramException if it is not allowed."""
    credentials = {}
    for mechanism in MECHANISMS:
        salt, stored_key, server_key, count = ScramMechanism(mechanism).make_auth_info(
            password, iteration_count=iterations
        )
        credentials[mechanism] = ScramCredentials(salt, stored_key, server_key, count)
    return credentials


def insert_user(conn: sqlite3.Connection, username: str, credentials: Credentials) -> None:
    try:
        conn.execute("INSERT INTO users (username) VALUES (?)", (username,))
    except sqlite3.IntegrityError:
        raise UserExists(username) from None
    _write_credentials(conn, username, credentials)


def store_credentials(conn: sqlite3.Connection, username: str, credentials: Credentials) -> bool:
    """Replace the user's credentials; False if there is no such user."""
    if not user_exists(conn, username):
        return False
    # Drop mechanisms missing from `credentials` too, so an old password cannot linger anywhere.
    conn.execute("DELETE FROM scram_credentials WHERE username = ?", (username,))
    _write_credentials(conn, username, credentials)
    return True


def _write_credentials(conn: sqlite3.Connection, username: str, credentials: Credentials) -> None:
    conn.executemany(
        "INSERT INTO scram_credentials (username, mechanism, salt, stored_key, server_key, iterations)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (username, mechanism, c.salt, c.stored_key, c.server_key, c.iterations)
            for mechanism, c in credentials.items()
        ],
    )


def create_user(conn: sqlite3.Connection, username: str, password: str, iterations: int) -> None:
    """Raises UserExists. Derives the keys inside the caller's transaction; see the module doc."""
    if user_exists(conn, username):  # cheap check first: skip PBKDF2 for a taken name
        raise UserExists(username)
    insert_user(conn, username, make_credentials(password, iterations))


def set_password(conn: sqlite3.Connection, username: str, password: str, iterations: int) -> bool:
    if not user_exists(conn, username):
        return False
    return store_credentials(conn, username, make_credentials(password, iterations))


def delete_user(conn: sqlite3.Connection, username: str) -> bool:
    """Remove the account and, by ON DELETE CASCADE, its keys, roster, pending and offline rows."""
    return conn.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount > 0


def list_users(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT username FROM users ORDER BY username")]


def user_exists(conn: sqlite3.Connection, username: str) -> bool:
    row = conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone()
    return row is not None


def require_user(conn: sqlite3.Connection, username: str) -> None:
    if not user_exists(conn, username):
        raise NoSuchUser(username)


def require_users(conn: sqlite3.Connection, usernames: set[str]) -> None:
    """Every one of them has an account (one query, for the per-message hot path)."""
    marks = ", ".join("?" * len(usernames))
    found = conn.execute(f"SELECT count(*) FROM users WHERE username IN ({marks})", tuple(usernames)).fetchone()[0]
    if found != len(usernames):
        raise NoSuchUser(", ".join(sorted(u for u in usernames if not user_exists(conn, u))))


def scram_credentials(conn: sqlite3.Connection, username: str, mechanism: str) -> ScramCredentials | None:
    row = conn.execute(
        "SELECT salt, stored_key, server_key, iterations FROM scram_credentials"
        " WHERE username = ? AND mechanism = ?",
        (username, mechanism),
    ).fetchone()
    return ScramCredentials(*row) if row else None
