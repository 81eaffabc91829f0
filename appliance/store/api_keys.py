"""Bearer keys of the notification API in SQLite (table `api_keys`, schema migration 6).

A key is 32 random bytes, URL-safe base64, shown once when it is made; only its SHA-256 is kept,
so a copy of the database does not let anyone call the API. 32 random bytes cannot be guessed, so
a fast hash is enough (no password hashing needed).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
from dataclasses import dataclass

KEY_BYTES = 32
_KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ApiKeyError(ValueError):
    """A bad or taken key name; str() is the reason."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    created: float
    last_used: float | None
    revoked: bool


def new_secret() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def check_key_name(name: str) -> None:
    if not _KEY_NAME.fullmatch(name):
        raise ApiKeyError(f"bad key name {name!r}: 1-64 letters, digits, '-', '_' or '.'")


def insert_key(conn: sqlite3.Connection, name: str, secret: str, now: float) -> None:
    check_key_name(name)
    try:
        conn.execute("INSERT INTO api_keys (name, secret_hash, created) VALUES (?, ?, ?)",
                     (name, secret_hash(secret), now))
    except sqlite3.IntegrityError:
        raise ApiKeyError(f"a key named {name!r} exists already (revoked keys keep their name)") from None


def match_key(conn: sqlite3.Connection, secret: str) -> ApiKey | None:
    """The key whose secret this is (revoked ones too: the caller says why it is refused).
    Every stored hash is compared in constant time; there are only a few keys."""
    wanted = secret_hash(secret)
    found: ApiKey | None = None
    for name, stored, created, last_used, revoked in conn.execute(
            "SELECT name, secret_hash, created, last_used, revoked FROM api_keys"):
        if hmac.compare_digest(stored, wanted):
            found = ApiKey(name, created, last_used, bool(revoked))
    return found


def touch(conn: sqlite3.Connection, name: str, now: float, every: float) -> None:
    """Record a use, at most once every `every` seconds (no write per request)."""
    conn.execute("UPDATE api_keys SET last_used = ? WHERE name = ? AND (last_used IS NULL OR last_used <= ?)",
                 (now, name, now - every))


def list_keys(conn: sqlite3.Connection) -> list[ApiKey]:
    rows = conn.execute("SELECT name, created, last_used, revoked FROM api_keys ORDER BY name")
    return [ApiKey(name, created, last_used, bool(revoked)) for name, created, last_used, revoked in rows]


def revoke(conn: sqlite3.Connection, name: str) -> bool:
    """False when there is no such key or it was revoked already."""
    return conn.execute("UPDATE api_keys SET revoked = 1 WHERE name = ? AND revoked = 0", (name,)).rowcount > 0


def replace_key(conn: sqlite3.Connection, name: str, secret: str, now: float) -> None:
    """Make the key `name` anew: the previous secret under that name stops working."""
    conn.execute("DELETE FROM api_keys WHERE name = ?", (name,))
    insert_key(conn, name, secret, now)
