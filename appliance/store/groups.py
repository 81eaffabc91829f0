"""Groups of users in SQLite (tables `user_groups`, `user_group_members`, schema migration 6).

A group is a named set of accounts that a notification can be sent to. Members must be accounts;
deleting an account removes its memberships (ON DELETE CASCADE), so a group never names a user
that does not exist.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable

# Short enough for a URL path segment and a terminal column; no '/', spaces or '@'.
_GROUP_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class GroupError(ValueError):
    """A bad group name, or members that are not accounts; str() is the reason."""


class NoSuchGroup(LookupError):
    """No group of that name; str() is the name."""


def check_group_name(name: str) -> None:
    if not _GROUP_NAME.fullmatch(name):
        raise GroupError(f"bad group name {name!r}: 1-64 letters, digits, '-', '_' or '.'")


def list_groups(conn: sqlite3.Connection) -> list[tuple[str, list[str]]]:
    """Every group with its members, both sorted."""
    groups: dict[str, list[str]] = {
        name: [] for (name,) in conn.execute("SELECT name FROM user_groups ORDER BY name")
    }
    rows = conn.execute("SELECT group_name, username FROM user_group_members ORDER BY group_name, username")
    for group, username in rows:
        groups[group].append(username)
    return list(groups.items())


def group_members(conn: sqlite3.Connection, name: str) -> list[str] | None:
    """The sorted members, or None when there is no such group."""
    if not _group_exists(conn, name):
        return None
    rows = conn.execute(
        "SELECT username FROM user_group_members WHERE group_name = ? ORDER BY username", (name,))
    return [username for (username,) in rows]


def create_group(conn: sqlite3.Connection, name: str, members: Iterable[str] = ()) -> None:
    """A new group; GroupError if the name is bad or taken or a member is not an account."""
    check_group_name(name)
    if _group_exists(conn, name):
        raise GroupError(f"group {name} already exists")
    wanted = _existing_accounts(conn, members)
    conn.execute("INSERT INTO user_groups (name, created) VALUES (?, ?)", (name, time.time()))
    _insert_members(conn, name, wanted)


def set_members(conn: sqlite3.Connection, name: str, members: Iterable[str]) -> bool:
    """Create the group or replace its members; True if it was created."""
    check_group_name(name)
    wanted = _existing_accounts(conn, members)
    created = not _group_exists(conn, name)
    if created:
        conn.execute("INSERT INTO user_groups (name, created) VALUES (?, ?)", (name, time.time()))
    else:
        conn.execute("DELETE FROM user_group_members WHERE group_name = ?", (name,))
    _insert_members(conn, name, wanted)
    return created


def add_members(conn: sqlite3.Connection, name: str, members: Iterable[str]) -> None:
    _require_group(conn, name)
    _insert_members(conn, name, _existing_accounts(conn, members))


def remove_members(conn: sqlite3.Connection, name: str, members: Iterable[str]) -> None:
    """Removing someone who is not a member is not an error: the result is what was asked for."""
    _require_group(conn, name)
    conn.executemany("DELETE FROM user_group_members WHERE group_name = ? AND username = ?",
                     [(name, username) for username in set(members)])


def delete_group(conn: sqlite3.Connection, name: str) -> bool:
    """False if there was no such group."""
    return conn.execute("DELETE FROM user_groups WHERE name = ?", (name,)).rowcount > 0


def _group_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM user_groups WHERE name = ?", (name,)).fetchone() is not None


def _require_group(conn: sqlite3.Connection, name: str) -> None:
    if not _group_exists(conn, name):
        raise NoSuchGroup(name)


def _existing_accounts(conn: sqlite3.Connection, members: Iterable[str]) -> set[str]:
    """The members as a set, after checking every one is an account (GroupError naming the others)."""
    wanted = set(members)
    unknown = sorted(u for u in wanted
                     if conn.execute("SELECT 1 FROM users WHERE username = ?", (u,)).fetchone() is None)
    if unknown:
        raise GroupError(f"no such user: {', '.join(unknown)}")
    return wanted


def _insert_members(conn: sqlite3.Connection, name: str, members: set[str]) -> None:
    conn.executemany("INSERT OR IGNORE INTO user_group_members (group_name, username) VALUES (?, ?)",
                     [(name, username) for username in sorted(members)])
