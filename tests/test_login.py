"""Logging in against the real server: TLS (STARTTLS and XEP-0368 direct TLS), each SASL mechanism,
channel binding, failures, resource binding and conflicts, login throttling, unknown hosts.

slixmpp is the client wherever it can express the case; tests/raw.py where it cannot (-PLUS with
tls-server-end-point, talking before STARTTLS, precise failure counts for throttling).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import PASSWORD, ServerProcess
from scramp import ScramClient

from tests.raw import RawClient, element_text
from tests.slix import Client, run

TRANSPORTS = pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])


def client(server: ServerProcess, jid: str, password: str = PASSWORD, *, mech: str | None = None,
           direct_tls: bool = False) -> Client:
    """A slixmpp client that records SASL failure conditions and whether a session started."""
    c = Client(server, jid, password, direct_tls=direct_tls)
    if mech:
        c.plugin["feature_mechanisms"].use_mech = mech
    return c


async def login(c: Client) -> None:
    await c.login(send_presence=False, get_roster=False)


async def refused(server: ServerProcess, jid: str, password: str = PASSWORD, **kwargs: Any) -> list[str]:
    """Log in expecting failure; returns the SASL failure conditions the client saw.
    (slixmpp clients are made inside the running event loop, never before asyncio.run.)"""
    c = client(server, jid, password, **kwargs)
    with pytest.raises(PermissionError):
        await login(c)
    await asyncio.wait_for(c.gone.wait(), 10)
    assert not c.sessionstarted
    return c.auth_failures




def mechanisms_used(server: ServerProcess, username: str) -> list[str]:
    """From the server log: every mechanism `username` authenticated with, in order."""
    pattern = rf"authenticated as {re.escape(username)} with (\S+)$"
    return re.findall(pattern, server.log_text(), re.MULTILINE)


def stream_error(data: bytes, condition: str) -> None:
    assert b"<stream:error" in data, data
    assert f"<{condition} ".encode() in data or f"<{condition}/>".encode() in data, data
    assert data.rstrip().endswith(b"</stream:stream>"), data


def sasl_failure(data: bytes, condition: str) -> None:
    assert data.startswith(b"<failure") and f"<{condition}/>".encode() in data, data


@pytest.fixture(scope="module")
def users(server: ServerProcess) -> dict[str, str]:
    """One account per scenario, so log lines ("authenticated as X") cannot be confused."""
    names = ["mech_sha1", "mech_sha256", "mech_plain", "plus", "wrongpw", "retry", "genres", "conflict",
             "pretls"]
    return {name: server.add_user(name) for name in names}


# ---- mechanisms and transports ------------------------------------------------------------------


@TRANSPORTS
def test_default_login_is_scram_sha_256(server: ServerProcess, users: dict[str, str], direct_tls: bool) -> None:
    async def scenario() -> tuple[str, set[str], bool]:
        c = client(server, users["mech_sha256"], direct_tls=direct_tls)
        await login(c)
        try:
            return c.plugin["feature_mechanisms"].mech.name, set(c.features), c.is_connected()
        finally:
            await c.logout()

    mech, negotiated, was_connected = run(scenario())
    assert was_connected
    assert mech == "SCRAM-SHA-256"
    # STARTTLS was negotiated on 5222, not on the direct-TLS port (TLS from the first byte).
    assert ("starttls" in negotiated) is not direct_tls
    assert mechanisms_used(server, "mech_sha256")[-1] == "SCRAM-SHA-256"


@TRANSPORTS
@pytest.mark.parametrize("mech, user", [("SCRAM-SHA-1", "mech_sha1"), ("SCRAM-SHA-256", "mech_sha256"),
                                        ("PLAIN", "mech_plain")])
def test_forced_mechanism(server: ServerProcess, users: dict[str, str], mech: str, user: str,
                          direct_tls: bool) -> None:
    async def scenario() -> tuple[str, str]:
        c = client(server, users[user], mech=mech, direct_tls=direct_tls)
        await login(c)
        try:
            # The session is usable: the server answers a ping.
            await c.plugin["xep_0199"].ping(jid=server.domain, timeout=5)
            return c.plugin["feature_mechanisms"].mech.name, c.boundjid.bare
        finally:
            await c.logout()

    used, bare = run(scenario())
    assert (used, bare) == (mech, users[user])
    assert mechanisms_used(server, user)[-1] == mech


@TRANSPORTS
@pytest.mark.parametrize("mech", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
def test_scram_plus_with_tls_server_end_point(server: ServerProcess, users: dict[str, str], mech: str,
                                              direct_tls: bool) -> None:
    """slixmpp only knows tls-unique/tls-exporter; scramp's client speaks tls-server-end-point."""
    raw = RawClient(server, direct_tls=direct_tls).open()
    try:
        assert f"<mechanism>{mech}</mechanism>".encode() in raw.features
        # XEP-0440: the server says which binding type it supports.
        assert b"sasl-channel-binding" in raw.features and b"type=\"tls-server-end-point\"" in raw.features
        outcome = raw.authenticate("plus", mechanism=mech,
                                   channel_binding=("tls-server-end-point", raw.server_end_point()))
        assert outcome.startswith(b"<success"), outcome  # authenticate() verified the server signature
        assert raw.bind("plus").endswith("/plus")
    finally:
        raw.close()
    assert mechanisms_used(server, "plus")[-1] == mech


def test_scram_plus_with_wrong_binding_data_is_refused(server: ServerProcess, users: dict[str, str]) -> None:
    """A man in the middle terminating TLS presents another certificate: the binding data differ."""
    raw = RawClient(server).open()
    try:
        forged = bytes(32)
        outcome = raw.authenticate("plus", mechanism="SCRAM-SHA-256-PLUS",
                                   channel_binding=("tls-server-end-point", forged))
        sasl_failure(outcome, "not-authorized")
    finally:
        raw.close()


def test_scram_downgrade_is_detected(server: ServerProcess, users: dict[str, str]) -> None:
    """gs2 flag 'y' (client supports binding, thinks the server does not) while -PLUS was offered:
    someone stripped -PLUS from the features, so the server refuses (RFC 5802 §6)."""
    raw = RawClient(server).open()
    try:
        outcome = raw.authenticate("plus", mechanism="SCRAM-SHA-256",
                                   channel_binding=("tls-server-end-point", raw.server_end_point()))
        assert outcome.startswith(b"<failure"), outcome
    finally:
        raw.close()


# ---- failures -------------------------------------------------------------------------------------


def test_wrong_password(server: ServerProcess, users: dict[str, str]) -> None:
    failures = run(refused(server, users["wrongpw"], "not the password"))
    # slixmpp tries each offered mechanism in turn; every one is refused the same way.
    assert failures and set(failures) == {"not-authorized"}
    assert server.logged("failed to authenticate as wrongpw (not-authorized)")
    assert not mechanisms_used(server, "wrongpw")
    assert f"{users['wrongpw']}/" not in server.log_text()  # no resource was ever bound


def test_unknown_user(server: ServerProcess, users: dict[str, str]) -> None:
    failures = run(refused(server, f"nobody@{server.domain}"))
    assert failures and set(failures) == {"not-authorized"}  # the same answer as a wrong password
    assert not mechanisms_used(server, "nobody")


def test_wrong_password_plain_and_scram_raw(server: ServerProcess, users: dict[str, str]) -> None:
    """Each mechanism on its own, and the stream survives a failure: retry on it with the right password."""
    raw = RawClient(server).open()
    try:
        for mech in ("PLAIN", "SCRAM-SHA-1"):
            sasl_failure(raw.authenticate("retry", "nope", mechanism=mech), "not-authorized")
        assert raw.login("retry", resource="again") == f"{users['retry']}/again"
    finally:
        raw.close()


@pytest.mark.parametrize("payload", [
    "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>",
    "<message to='retry@appliance.test'><body>let me in</body></message>",
], ids=["bind", "message"])
def test_no_session_after_a_failed_login(server: ServerProcess, users: dict[str, str], payload: str) -> None:
    raw = RawClient(server).open()
    try:
        sasl_failure(raw.authenticate("retry", "nope", mechanism="PLAIN"), "not-authorized")
        raw.send(payload)
        stream_error(raw.read_to_close(), "not-authorized")
    finally:
        raw.close()


def scram_server_first(server: ServerProcess, username: str) -> dict[str, str]:
    """Start SCRAM-SHA-256 for `username`, read the salt and iteration count, then <abort/>
    (an abort is not a failed login, so this costs no throttling budget)."""
    raw = RawClient(server).open()
    try:
        scram = ScramClient(["SCRAM-SHA-256"], username, "irrelevant")
        first = base64.b64encode(scram.get_client_first().encode()).decode()
        raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{first}</auth>")
        challenge = base64.b64decode(element_text(raw.read_until(b"</challenge>"))).decode()
        raw.send("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        sasl_failure(raw.read_until(b"</failure>"), "aborted")
    finally:
        raw.close()
    return dict(part.split("=", 1) for part in challenge.split(","))


def test_unknown_user_salt_is_as_stable_as_a_real_one(server: ServerProcess, users: dict[str, str]) -> None:
    known = [scram_server_first(server, "mech_sha256") for _ in range(2)]
    unknown = [scram_server_first(server, "ghost") for _ in range(2)]
    assert known[0]["s"] == known[1]["s"]  # a real account's salt is stored
    assert unknown[0]["i"] == known[0]["i"]
    assert unknown[0]["s"] == unknown[1]["s"]  # an unknown one must not look any different


def with_scram_iterations(server: ServerProcess, iterations: int) -> None:
    """The harness writes scram_iterations = 4096, which hides the bug below; use another count."""
    write = server.write_config

    def write_config() -> Path:
        path = write()
        path.write_text(path.read_text().replace("scram_iterations = 4096", f"scram_iterations = {iterations}"))
        return path

    server.write_config = write_config  # type: ignore[method-assign]


def test_unknown_user_iteration_count_matches_configured(fresh_server: ServerProcess) -> None:
    with_scram_iterations(fresh_server, 5000)
    fresh_server.start()
    fresh_server.add_user("real")
    assert scram_server_first(fresh_server, "real")["i"] == "5000"
    assert scram_server_first(fresh_server, "ghost")["i"] == "5000"


# ---- resources ---------------------------------------------------------------------------------------


def test_server_generated_resource(server: ServerProcess, users: dict[str, str]) -> None:
    async def scenario() -> list[str]:
        clients = [client(server, users["genres"]) for _ in range(2)]  # bare JIDs: no resource asked for
        for c in clients:
            await login(c)  # one after the other, both online at the end
        try:
            assert all(c.is_connected() for c in clients)
            return [c.boundjid.full for c in clients]
        finally:
            await asyncio.gather(*(c.logout() for c in clients))

    first, second = run(scenario())
    for full in (first, second):
        bare, _, resource = full.partition("/")
        assert bare == users["genres"] and re.fullmatch(r"appliance-[0-9a-f]{8}", resource), full
    assert first != second  # two sessions of one account, neither replaced the other


def test_raw_bind_without_resource(server: ServerProcess, users: dict[str, str]) -> None:
    raw = RawClient(server).open()
    try:
        jid = raw.login("genres", resource=None)
    finally:
        raw.close()
    bare, _, resource = jid.partition("/")
    assert bare == users["genres"] and resource.startswith("appliance-")


def test_resource_conflict(server: ServerProcess, users: dict[str, str]) -> None:
    """Two logins with the same full JID: the older stream gets `conflict` and is closed."""
    full = users["conflict"] + "/desk"

    async def scenario() -> tuple[list[str], str, bool]:
        first = client(server, full)
        await login(first)
        second = client(server, full)
        await login(second)
        await asyncio.wait_for(first.gone.wait(), 10)
        try:
            await second.plugin["xep_0199"].ping(jid=server.domain, timeout=5)
            return [e["condition"] for e in first.stream_errors], second.boundjid.full, second.is_connected()
        finally:
            await second.logout()

    first_errors, second_jid, second_connected = run(scenario())
    assert first_errors == ["conflict"]
    assert second_jid == full and second_connected
    assert server.logged(f"{full} logged in again from 127.0.0.1")


# ---- stream-level refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AHByZXRscwB4</auth>",
    "<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>x</username>"
    "<password>y</password></query></iq>",
    "<message to='pretls@appliance.test'><body>hi</body></message>",
], ids=["auth", "register", "message"])
def test_starttls_is_required(server: ServerProcess, users: dict[str, str], payload: str) -> None:
    raw = RawClient(server).connect()
    try:
        features = raw.header()
        assert b"<starttls" in features and b"<required/>" in features
        assert b"mechanisms" not in features  # nothing to authenticate with before TLS
        raw.send(payload)
        stream_error(raw.read_to_close(), "policy-violation")
    finally:
        raw.close()
    assert not mechanisms_used(server, "pretls")


def test_no_starttls_after_direct_tls(server: ServerProcess) -> None:
    raw = RawClient(server, direct_tls=True).open()
    try:
        assert b"starttls" not in raw.features and b"<mechanism>SCRAM-SHA-256</mechanism>" in raw.features
        raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        stream_error(raw.read_to_close(), "policy-violation")
    finally:
        raw.close()


@TRANSPORTS
def test_unknown_host(server: ServerProcess, direct_tls: bool) -> None:
    raw = RawClient(server, direct_tls=direct_tls).connect()
    try:
        raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.example' version='1.0'>")
        data = raw.read_to_close()
    finally:
        raw.close()
    assert data.startswith(b"<?xml") and b"<stream:stream" in data  # header first (RFC 6120 §4.9.1.1)
    stream_error(data, "host-unknown")


def test_unknown_host_slixmpp(server: ServerProcess) -> None:
    async def scenario() -> list[str]:
        c = client(server, "someone@elsewhere.example")
        c.connect("127.0.0.1", server.port)
        await asyncio.wait_for(c.gone.wait(), 10)
        return [e["condition"] for e in c.stream_errors]

    assert run(scenario()) == ["host-unknown"]


# ---- throttling (servers of their own: the failure counts are global) -------------------------------------


def failed_attempts(server: ServerProcess, username: str, count: int, *, source: str | None = None) -> None:
    raw = RawClient(server, source=source).open()
    try:
        for _ in range(count):
            sasl_failure(raw.authenticate(username, "wrong password"), "not-authorized")
    finally:
        raw.close()


def attempt(server: ServerProcess, username: str, password: str = PASSWORD, *, source: str | None = None,
            mechanism: str = "SCRAM-SHA-256") -> bytes:
    raw = RawClient(server, source=source).open()
    try:
        return raw.authenticate(username, password, mechanism=mechanism)
    finally:
        raw.close()


def test_login_failures_per_account(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"limits.login_failures_per_account": 3, "limits.login_failures_per_address": 100}
    fresh_server.start()
    alice, bob = fresh_server.add_user("alice"), fresh_server.add_user("bob")

    failed_attempts(fresh_server, "alice", 2)
    assert attempt(fresh_server, "alice").startswith(b"<success")  # under the limit; success clears it
    failed_attempts(fresh_server, "alice", 3)

    # Now even the right password is refused, by every mechanism, without telling whether it was right.
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        sasl_failure(attempt(fresh_server, "alice", mechanism=mechanism), "temporary-auth-failure")
    sasl_failure(attempt(fresh_server, "alice", "wrong password"), "temporary-auth-failure")
    assert "authenticated as alice" not in fresh_server.log_text().split("failed to authenticate as alice")[-1]

    async def slixmpp_view() -> tuple[list[str], str]:
        refused_alice = await refused(fresh_server, alice)
        c = client(fresh_server, bob)  # another account from the same address is not affected
        await login(c)
        await c.logout()
        return refused_alice, c.boundjid.bare

    alice_failures, bob_bare = run(slixmpp_view())
    assert alice_failures and set(alice_failures) == {"temporary-auth-failure"}
    assert bob_bare == bob


def test_login_failure_window_slides(fresh_server: ServerProcess) -> None:
    window = 2.0
    fresh_server.settings = {"limits.login_failures_per_account": 2, "limits.login_failure_window": window}
    fresh_server.start()
    fresh_server.add_user("alice")
    failed_attempts(fresh_server, "alice", 2)
    last_failure = time.monotonic()
    sasl_failure(attempt(fresh_server, "alice"), "temporary-auth-failure")
    # Once the failures are older than the window, alice may log in again.
    time.sleep(max(0.0, last_failure + window + 0.2 - time.monotonic()))
    assert attempt(fresh_server, "alice").startswith(b"<success")


def test_login_failures_per_address(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"limits.login_failures_per_address": 3, "limits.login_failures_per_account": 100}
    fresh_server.start()
    for name in ("alice", "bob", "carol"):
        fresh_server.add_user(name)

    failed_attempts(fresh_server, "alice", 1)
    failed_attempts(fresh_server, "bob", 1)
    failed_attempts(fresh_server, "nobody", 1)  # unknown users count against the address too

    # carol never failed, but her address did: refused at <auth>, before any challenge.
    sasl_failure(attempt(fresh_server, "carol"), "temporary-auth-failure")
    sasl_failure(attempt(fresh_server, "carol", mechanism="PLAIN"), "temporary-auth-failure")
    assert "temporary-auth-failure" in set(run(refused(fresh_server, f"carol@{fresh_server.domain}")))

    # Another source address is not affected (the whole of 127.0.0.0/8 is loopback on Linux).
    assert attempt(fresh_server, "carol", source="127.0.0.2").startswith(b"<success")
    assert attempt(fresh_server, "alice", source="127.0.0.2").startswith(b"<success")
