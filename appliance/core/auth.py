"""Authentication: credentials for SASL and login-failure throttling per account and per address."""

from __future__ import annotations

import hmac
import os
import time
from collections import deque

import trio
from scramp import ScramException, ScramMechanism

from appliance.config import Limits
from appliance.proto.sasl import AuthInfo, decoy_credentials
from appliance.store import users
from appliance.store.db import Database


class SlidingWindow:
    """Event times per key within a sliding window (login failures, registrations); forgets keys
    once their window is empty, so memory follows recent activity only."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._times: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._times.get(key)
        while times and times[0] <= now - self.window:
            times.popleft()
        if times is not None and not times:
            del self._times[key]
            return None
        return times

    def blocked(self, key: str) -> bool:
        times = self._recent(key, time.monotonic())
        return times is not None and len(times) >= self.limit

    def record(self, key: str) -> None:
        now = time.monotonic()
        times = self._recent(key, now) or self._times.setdefault(key, deque())
        times.append(now)

    def clear(self, key: str) -> None:
        self._times.pop(key, None)


class AuthManager:
    def __init__(self, db: Database, limits: Limits, iterations: int) -> None:
        self.db = db
        self.iterations = iterations
        self.decoy_secret = os.urandom(32)  # per process: decoys are stable while it runs
        self.accounts = SlidingWindow(limits.login_failures_per_account, limits.login_failure_window)
        self.addresses = SlidingWindow(limits.login_failures_per_address, limits.login_failure_window)
        self.registrations = SlidingWindow(limits.registrations_per_address, limits.registration_window)

    def for_connection(self, address: str) -> ConnectionAuth:
        return ConnectionAuth(self, address)


class ConnectionAuth:
    """The CredentialSource and throttle for one connection (proto.sasl and proto.c2s call it)."""

    def __init__(self, manager: AuthManager, address: str) -> None:
        self.manager = manager
        self.address = address

    def credentials(self, username: str, mechanism: str) -> AuthInfo | None:
        found = self.manager.db.read(users.scram_credentials, username, mechanism)
        if found is None:
            return None
        return found.salt, found.stored_key, found.server_key, found.iterations

    def decoy(self, username: str, mechanism: str) -> AuthInfo:
        return decoy_credentials(self.manager.decoy_secret, username, mechanism, self.manager.iterations)

    def allowed(self, username: str | None) -> bool:
        if self.manager.addresses.blocked(self.address):
            return False
        return username is None or not self.manager.accounts.blocked(username)

    def failed(self, username: str | None) -> None:
        self.manager.addresses.record(self.address)
        if username:
            self.manager.accounts.record(username)

    def succeeded(self, username: str) -> None:
        self.manager.accounts.clear(username)



def password_matches(stored: users.ScramCredentials, password: str) -> bool:
    """Does `password` give these SCRAM-SHA-256 keys? Checked as SCRAM does: SaltedPassword from the
    stored salt and iterations, then H(HMAC(SaltedPassword, "Client Key")) must equal StoredKey.
    Slow (PBKDF2): `verify_password` runs it in a thread."""
    try:
        _, stored_key, _, _ = ScramMechanism("SCRAM-SHA-256").make_auth_info(
            password, iteration_count=stored.iterations, salt=stored.salt)
    except ScramException:  # SASLprep refuses it: no stored password can be such a string
        return False
    return hmac.compare_digest(stored_key, stored.stored_key)


async def verify_password(db: Database, username: str, password: str) -> bool:
    """The admin page's sign-in: the keys are read on the event loop (the reader connection is
    not shared with threads), the derivation runs in a thread."""
    stored = db.read(users.scram_credentials, username, "SCRAM-SHA-256")
    if stored is None:
        return False
    return await trio.to_thread.run_sync(password_matches, stored, password)
