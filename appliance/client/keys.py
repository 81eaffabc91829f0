"""This device's key pair, what it trusts of other devices' keys, and the messages it has seen.

Kept in the client's SQLite (ClientState.conn; the tables are created here, so this module needs no
migration of its own). Trust is per (bare JID, device id) and one of:

- verified: the key's fingerprint was compared (scanned from an invite QR code, or by the user);
- tofu: trusted on first use, nobody compared it;
- changed: a key other than the accepted one was published (or one that does not match the
  fingerprint an invite promised). Encrypting to, or decrypting from, such a device raises
  e2e.KeyChanged until the user accepts the new key (accept_change) or verifies it (verify).

docs/e2e.md explains the rules and the replay window.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import nacl.public

from appliance.client.e2e import (CHANGED, TOFU, VERIFIED, DeviceKey, E2EError, PeerKey, Replayed,
                                  bare, fingerprint_hex)

EXPECTED = "expected"   # trust_of() for a device known only by an invite's fingerprint, no key yet

_SCHEMA = """
CREATE TABLE IF NOT EXISTS e2e_own_device (
    slot INTEGER PRIMARY KEY CHECK (slot = 1),
    device_id INTEGER NOT NULL,
    private_key BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS e2e_devices (
    jid TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    public_key BLOB,             -- NULL: only an invite's fingerprint is known so far
    pending_key BLOB,            -- a different key seen since, not accepted yet
    expected TEXT,               -- the fingerprint an invite promised (hex)
    trust TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    first_seen REAL NOT NULL,
    PRIMARY KEY (jid, device_id)
);
CREATE TABLE IF NOT EXISTS e2e_seen (    -- ReplayGuard: message ids seen, by the sender's timestamp
    jid TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    stamp INTEGER NOT NULL,
    PRIMARY KEY (jid, device_id, message_id)
);
CREATE INDEX IF NOT EXISTS e2e_seen_stamp ON e2e_seen (stamp);
CREATE TABLE IF NOT EXISTS e2e_seen_floor (slot INTEGER PRIMARY KEY CHECK (slot = 1), stamp INTEGER NOT NULL);
"""


class FingerprintMismatch(E2EError):
    """The fingerprint the user (or an invite) gave matches no key of that device."""


@dataclass
class Changes:
    """What one device list changed, for the user interface."""
    new: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)       # now trust CHANGED: must be shown
    removed: list[int] = field(default_factory=list)


class KeyStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        conn.executescript(_SCHEMA)

    def own_device(self) -> DeviceKey:
        """This device's identity, generated and stored on first use."""
        row = self._conn.execute("SELECT device_id, private_key FROM e2e_own_device").fetchone()
        if row is not None:
            return DeviceKey(row[0], nacl.public.PrivateKey(row[1]))
        device = DeviceKey.generate()
        with _transaction(self._conn):
            self._conn.execute("INSERT INTO e2e_own_device VALUES (1, ?, ?, ?)",
                               (device.device_id, bytes(device.private_key), time.time()))
        _owner_only(self._conn)
        return device

    def devices_of(self, jid: str) -> dict[int, PeerKey]:
        """Every device of `jid` with a known key, active or not (e2e.encrypt skips inactive ones,
        e2e.decrypt still opens their older messages)."""
        rows = self._conn.execute(
            "SELECT device_id, public_key, trust, pending_key, active FROM e2e_devices"
            " WHERE jid = ? AND public_key IS NOT NULL", (bare(jid),))
        return {d: PeerKey(key, trust, pending, bool(active)) for d, key, trust, pending, active in rows}

    def trust_of(self, jid: str, device_id: int) -> str | None:
        """VERIFIED, TOFU, CHANGED, EXPECTED, or None for a device never heard of."""
        row = self._row(bare(jid), device_id)
        return None if row is None else row["trust"]

    def remember(self, jid: str, devices: Mapping[int, bytes], *, verified: bool = False) -> Changes:
        """Take in `jid`'s published device list. A new device is trusted on first use (or verified,
        if an invite promised its fingerprint, or `verified`: the caller compared these very keys);
        a different key for a known device is held as pending, trust CHANGED. Devices missing from
        the list become inactive."""
        jid, changes = bare(jid), Changes()
        with _transaction(self._conn):
            for device_id, key in devices.items():
                self._remember_one(jid, device_id, key, verified, changes)
            listed = f"device_id IN ({','.join('?' * len(devices))})"
            gone = self._conn.execute(f"SELECT device_id FROM e2e_devices WHERE jid = ? AND active = 1"
                                      f" AND public_key IS NOT NULL AND NOT {listed}", (jid, *devices))
            changes.removed = sorted(d for (d,) in gone)
            self._conn.execute(f"UPDATE e2e_devices SET active = {listed} WHERE jid = ?"
                               " AND public_key IS NOT NULL", (*devices, jid))
        return changes

    def _remember_one(self, jid: str, device_id: int, key: bytes, verified: bool,
                      changes: Changes) -> None:
        row = self._row(jid, device_id)
        if row is None or row["public_key"] is None:
            expected = row["expected"] if row is not None else None
            if expected is not None and expected != fingerprint_hex(key):
                self._set(jid, device_id, public_key=key, pending_key=key, trust=CHANGED)
                changes.changed.append(device_id)
                return
            trust = VERIFIED if verified or expected is not None else TOFU
            self._set(jid, device_id, public_key=key, trust=trust)
            changes.new.append(device_id)
        elif verified:
            self._set(jid, device_id, public_key=key, pending_key=None, trust=VERIFIED)
            if key != row["public_key"]:
                changes.changed.append(device_id)
        elif key != row["public_key"] and key != row["pending_key"]:
            self._set(jid, device_id, pending_key=key, trust=CHANGED)
            changes.changed.append(device_id)

    def accept_change(self, jid: str, device_id: int) -> None:
        """The user accepts a changed key: it becomes the device's key, trusted on first use."""
        jid = bare(jid)
        with _transaction(self._conn):
            row = self._row(jid, device_id)
            if row is None or row["pending_key"] is None:
                raise ValueError(f"device {device_id} of {jid} has no changed key to accept")
            self._set(jid, device_id, public_key=row["pending_key"], pending_key=None, trust=TOFU)

    def verify(self, jid: str, device_id: int, fingerprint: str) -> str:
        """The user (or a scanned invite) vouches for `fingerprint`: the device key it matches
        becomes the device's only key, VERIFIED. If a change was pending, matching the new key
        accepts it, matching the old one discards it (the device will be flagged again if the other
        key is published again). For a device whose key is not known yet, the fingerprint is kept
        and checked when the key arrives (returns EXPECTED). Raises FingerprintMismatch when the
        fingerprint matches neither key."""
        jid, wanted = bare(jid), _normalise(fingerprint)
        with _transaction(self._conn):
            row = self._row(jid, device_id)
            if row is None or row["public_key"] is None:
                self._set(jid, device_id, expected=wanted, trust=EXPECTED)
                return EXPECTED
            for key in (row["pending_key"], row["public_key"]):
                if key is not None and fingerprint_hex(key) == wanted:
                    self._set(jid, device_id, public_key=key, pending_key=None, trust=VERIFIED)
                    return VERIFIED
        raise FingerprintMismatch(f"the fingerprint given for device {device_id} of {jid} matches "
                                  "none of its keys: do not trust it")

    def _row(self, jid: str, device_id: int) -> sqlite3.Row | None:
        cursor = self._conn.execute("SELECT * FROM e2e_devices WHERE jid = ? AND device_id = ?",
                                    (jid, device_id))
        cursor.row_factory = sqlite3.Row
        return cursor.fetchone()

    def _set(self, jid: str, device_id: int, **values: object) -> None:
        """Insert or update one device's row (inside the caller's transaction)."""
        self._conn.execute("INSERT OR IGNORE INTO e2e_devices (jid, device_id, trust, first_seen)"
                           " VALUES (?, ?, ?, ?)", (jid, device_id, TOFU, time.time()))
        assignments = ", ".join(f"{name} = ?" for name in values)
        self._conn.execute(f"UPDATE e2e_devices SET {assignments} WHERE jid = ? AND device_id = ?",
                           (*values.values(), jid, device_id))


def _normalise(fingerprint: str) -> str:
    hexdigits = "".join(c for c in fingerprint.lower() if c not in " :")
    if len(hexdigits) != 64 or any(c not in "0123456789abcdef" for c in hexdigits):
        raise ValueError(f"not a SHA-256 fingerprint: {fingerprint!r}")
    return hexdigits


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, whichever isolation mode the connection uses (ClientState's is
    autocommit); inside a caller's transaction, part of it."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _owner_only(conn: sqlite3.Connection) -> None:
    """The database now holds a private key: readable by its owner only (with its WAL files)."""
    for _, name, path in conn.execute("PRAGMA database_list").fetchall():
        if name == "main" and path:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.chmod(path + suffix, 0o600)


class ReplayGuard:
    """Message ids seen, per sending device, within a window of the sender's timestamps (e2e.decrypt's
    replay_guard). A message dated before `now - window` cannot be told from a replay of one whose
    id was forgotten, so it is refused; so is one dated more than `future` ahead (a contact cannot
    pin ids for ever). At most `max_entries` ids are kept: past that the oldest are forgotten and
    everything dated up to them is refused from then on (the floor)."""

    def __init__(self, conn: sqlite3.Connection, *, window: float = 400 * 86400.0,
                 future: float = 86400.0, max_entries: int = 100_000) -> None:
        self._conn, self.window, self.future, self.max_entries = conn, window, future, max_entries
        conn.executescript(_SCHEMA)

    def admit(self, jid: str, device_id: int, message_id: str, stamp: int, now: float) -> None:
        with _transaction(self._conn):
            floor = max(now - self.window, self._floor())
            if stamp < floor:
                raise Replayed(f"message {message_id} is dated before the replay window "
                               f"({time.strftime('%Y-%m-%d %H:%M', time.gmtime(floor))} UTC): refused")
            if stamp > now + self.future:
                raise Replayed(f"message {message_id} is dated in the future (the sender's clock, "
                               "or this device's, is wrong): refused")
            added = self._conn.execute("INSERT OR IGNORE INTO e2e_seen VALUES (?, ?, ?, ?)",
                                       (jid, device_id, message_id, stamp)).rowcount
            if not added:
                raise Replayed(f"message {message_id} from {jid} (device {device_id}) was "
                               "received before: a replay, refused")
            self._conn.execute("DELETE FROM e2e_seen WHERE stamp < ?", (now - self.window,))
            self._forget_beyond_cap()

    def _floor(self) -> float:
        row = self._conn.execute("SELECT stamp FROM e2e_seen_floor").fetchone()
        return float("-inf") if row is None else row[0]

    def _forget_beyond_cap(self) -> None:
        row = self._conn.execute("SELECT stamp FROM e2e_seen ORDER BY stamp DESC LIMIT 1 OFFSET ?",
                                 (self.max_entries,)).fetchone()
        if row is not None:
            self._conn.execute("DELETE FROM e2e_seen WHERE stamp <= ?", row)
            self._conn.execute("INSERT OR REPLACE INTO e2e_seen_floor VALUES (1, ?)", (row[0] + 1,))
