"""Clients that are not slixmpp, against the real server: go-sendxmpp (Go) and xmpp.js (Node).

go-sendxmpp comes from Debian and xmpp.js from npm (tests/js, `npm ci`): scripts/test.sh installs
both. A developer without them gets these tests skipped with the reason; where the environment
variable CI is set, a missing client fails the test instead, so CI cannot skip them silently.

Both clients verify the server's self-signed certificate for real: go-sendxmpp through
SSL_CERT_FILE (Go's crypto/tls reads its roots from there on Linux; the tool has no CA option,
only --no-tls-verify, which is never used here), xmpp.js through NODE_EXTRA_CA_CERTS. One test per
client shows that, without the certificate, the connection is refused.

The slixmpp peers send initial presence and the other clients address them by their bare JID, as
people do: those messages reach them only once presence (RFC 6121 §8.5.2.1.1) works.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.harness import PASSWORD, ServerProcess, env_without_proxies
from tests.slix import connected, run

JS_DIR = Path(__file__).parent / "js"
JS_CLIENT = JS_DIR / "xmpp_client.mjs"
TRANSPORTS = ["starttls", "direct-tls"]
WRONG_PASSWORD = "not the password"
BARE_JID_HINT = ("a message to a bare JID reaches only available resources: is presence "
                 "(initial presence, RFC 6121 §4.2 and §8.5.2.1.1) in place?")

_user_numbers = itertools.count()


def _missing(what: str, how: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing, and CI must run this test: {how}")
    pytest.skip(f"{what} is not installed: {how}")


@pytest.fixture
def go_sendxmpp() -> str:
    path = shutil.which("go-sendxmpp")
    if path is None:
        _missing("go-sendxmpp", "apt-get install go-sendxmpp (scripts/test.sh does it)")
    return path


@pytest.fixture
def node() -> str:
    path = shutil.which("node")
    if path is None:
        _missing("node", "install Node.js >= 20.10, then `npm ci` in tests/js (scripts/test.sh does that)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if tuple(int(part) for part in version.lstrip("v").split(".")[:2]) < (20, 10):
        _missing(f"Node.js >= 20.10 (for @xmpp/client 0.14; this is {version})", "install a newer Node.js")
    if not (JS_DIR / "node_modules" / "@xmpp" / "client").is_dir():
        _missing("xmpp.js", "run `npm ci` in tests/js (scripts/test.sh does it)")
    return path


@pytest.fixture
def new_user(server: ServerProcess) -> Callable[[str], str]:
    """Accounts of the test's own, so that nothing one test leaves (offline messages, failed
    logins counted against an account) reaches another."""
    def make(prefix: str) -> str:
        return server.add_user(f"{prefix}{next(_user_numbers)}")
    return make


def _token() -> str:
    return secrets.token_hex(4)


def _server_log(server: ServerProcess, lines: int = 60) -> str:
    return "\n".join(server.log_text().splitlines()[-lines:])




# ---- go-sendxmpp -------------------------------------------------------------------------------


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def explain(self, server: ServerProcess) -> str:
        return (f"exit status {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}\n"
                f"--- server log (end)\n{_server_log(server)}")


async def sendxmpp(server: ServerProcess, exe: str, home: Path, sender: str, recipient: str, body: str, *,
                   transport: str = "starttls", password: str = PASSWORD, trust_cert: bool = True) -> Finished:
    """go-sendxmpp sends `body` (its standard input) from `sender` to `recipient`, then logs out."""
    port = server.port if transport == "starttls" else server.tls_port
    args = [exe, "--username", sender, "--password", password, "--jserver", f"127.0.0.1:{port}",
            "--timeout", "10"]
    if transport == "direct-tls":
        args.append("--tls")
    args.append(recipient)
    env = env_without_proxies()  # go-xmpp dials through HTTP_PROXY when it is set
    env["HOME"] = str(home)       # never the developer's ~/.config/go-sendxmpp/sendxmpprc
    env.pop("SSL_CERT_DIR", None)
    if trust_cert:
        env["SSL_CERT_FILE"] = str(server.cert)
    else:
        env.pop("SSL_CERT_FILE", None)  # the system's roots, which do not know the test certificate
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        # No final newline: go-sendxmpp treats the input as lines and drops the last line's end.
        out, err = await asyncio.wait_for(proc.communicate(body.encode()), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return Finished(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def _go_body(transport: str) -> str:
    # Two lines, XML's special characters, non-ASCII text and spaces that must all survive.
    return f"go-sendxmpp over {transport} {_token()}\n  <b>bold?</b> & 'quotes' \"too\" — ünïcødé ✓  "


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sendxmpp_reaches_online_slixmpp_client_by_bare_jid(server: ServerProcess, go_sendxmpp: str,
                                                             new_user: Callable[[str], str], tmp_path: Path,
                                                             transport: str) -> None:
    sender, receiver = new_user("gosend"), new_user("gorecv")
    body = _go_body(transport)

    async def scenario() -> None:
        client = await connected(server, receiver, get_roster=False)
        try:
            result = await sendxmpp(server, go_sendxmpp, tmp_path, sender, receiver, body, transport=transport)
            assert result.returncode == 0, result.explain(server)
            try:
                message = await client.next_message(10)
            except asyncio.TimeoutError:
                pytest.fail(f"{receiver} got no message from go-sendxmpp; {BARE_JID_HINT}\n{result.explain(server)}")
            assert message["type"] != "error", message
            assert message["body"] == body
            assert message["from"].bare == sender
        finally:
            await client.logout()

    run(scenario())


def test_sendxmpp_reaches_full_jid(server: ServerProcess, go_sendxmpp: str, new_user: Callable[[str], str],
                                   tmp_path: Path) -> None:
    sender, receiver = new_user("gosend"), new_user("gorecv")
    body = _go_body("starttls, to a full JID")

    async def scenario() -> None:
        client = await connected(server, receiver, get_roster=False)
        try:
            result = await sendxmpp(server, go_sendxmpp, tmp_path, sender, client.boundjid.full, body)
            assert result.returncode == 0, result.explain(server)
            message = await client.next_message(10)
            assert message["body"] == body
            assert message["from"].bare == sender
            assert message["to"] == client.boundjid
        finally:
            await client.logout()

    run(scenario())


def test_sendxmpp_wrong_password_fails(server: ServerProcess, go_sendxmpp: str, new_user: Callable[[str], str],
                                       tmp_path: Path) -> None:
    sender, receiver = new_user("gowrong"), new_user("gorecv")
    result = run(sendxmpp(server, go_sendxmpp, tmp_path, sender, receiver, "never sent", transport="direct-tls",
                          password=WRONG_PASSWORD))
    assert result.returncode != 0, result.explain(server)
    assert "not-authorized" in result.stderr, result.explain(server)
    assert server.logged(f"failed to authenticate as {sender.split('@')[0]} (not-authorized)")


def test_sendxmpp_verifies_the_certificate(server: ServerProcess, go_sendxmpp: str,
                                           new_user: Callable[[str], str], tmp_path: Path) -> None:
    """Without the test certificate among its roots, go-sendxmpp refuses the server: so the other
    tests, which pass it through SSL_CERT_FILE, do verify it."""
    sender = new_user("gosend")
    for transport in TRANSPORTS:
        result = run(sendxmpp(server, go_sendxmpp, tmp_path, sender, sender, "never sent", transport=transport,
                              trust_cert=False))
        assert result.returncode != 0, result.explain(server)
        assert "certificate signed by unknown authority" in result.stderr, result.explain(server)


# ---- xmpp.js -----------------------------------------------------------------------------------


@dataclass
class XmppJs:
    """tests/js/xmpp_client.mjs running: one JSON object per line on its standard output."""
    server: ServerProcess
    proc: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: bytearray = field(default_factory=bytearray)
    stderr_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, server: ServerProcess, node: str, jid: str, *, transport: str = "starttls",
                    password: str = PASSWORD, send_to: str | None = None, body: str | None = None,
                    expect: int = 0, trust_cert: bool = True, timeout: float = 20) -> XmppJs:
        service = (f"xmpp://127.0.0.1:{server.port}" if transport == "starttls"
                   else f"xmpps://127.0.0.1:{server.tls_port}")
        args = [node, str(JS_CLIENT), "--service", service, "--domain", server.domain,
                "--username", jid.split("@")[0], "--expect", str(expect), "--timeout", str(timeout)]
        if send_to is not None:
            args += ["--send-to", send_to, "--body", body or ""]
        env = env_without_proxies()
        env["XMPP_PASSWORD"] = password
        env.pop("NODE_TLS_REJECT_UNAUTHORIZED", None)  # verification stays on
        if trust_cert:
            env["NODE_EXTRA_CA_CERTS"] = str(server.cert)
        else:
            env.pop("NODE_EXTRA_CA_CERTS", None)
        proc = await asyncio.create_subprocess_exec(*args, env=env, cwd=JS_DIR, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        client = cls(server, proc)
        client.stderr_task = asyncio.create_task(client._read_stderr())
        return client

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    def explain(self) -> str:
        seen = "\n".join(json.dumps(e, ensure_ascii=False) for e in self.events)
        return (f"xmpp.js exit status {self.proc.returncode}\n--- its events\n{seen}\n"
                f"--- its XML exchange (stderr)\n{self.stderr.decode(errors='replace')[-8000:]}\n"
                f"--- server log (end)\n{_server_log(self.server)}")

    async def next_event(self, timeout: float = 15) -> dict[str, Any] | None:
        """The next line, or None at the end of the output."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            pytest.fail(f"xmpp.js said nothing for {timeout} s\n{self.explain()}")
        if not line:
            return None
        event = json.loads(line)
        self.events.append(event)
        return event

    async def expect(self, kind: str, timeout: float = 15, hint: str = "") -> dict[str, Any]:
        """Events up to the next one of `kind`; an error or the end of the output fails the test."""
        while True:
            event = await self.next_event(timeout)
            if event is None or event["event"] == "error":
                await self.finish()
                pytest.fail(f"xmpp.js: expected {kind!r}, got {event}{'; ' + hint if hint else ''}\n"
                            f"{self.explain()}")
            if event["event"] == kind:
                return event

    async def finish(self, timeout: float = 15) -> int:
        """Read what is left and wait for the exit status."""
        while await self.next_event(timeout) is not None:
            pass
        await asyncio.wait_for(self.proc.wait(), timeout)
        if self.stderr_task is not None:
            await self.stderr_task
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()  # this process only, by its own handle
            await self.proc.wait()
        if self.stderr_task is not None:
            await self.stderr_task


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_xmppjs_exchanges_messages_with_slixmpp(server: ServerProcess, node: str,
                                                new_user: Callable[[str], str], transport: str) -> None:
    js_jid, peer_jid = new_user("js"), new_user("jspeer")
    to_peer = f"xmpp.js over {transport} {_token()}: <x/> & 'ünïcødé' ✓"
    reply_full = f"slixmpp to the full JID {_token()} <&>"
    reply_bare = f"slixmpp to the bare JID {_token()} ünïcødé"

    async def scenario() -> None:
        peer = await connected(server, peer_jid, get_roster=False)
        js = await XmppJs.start(server, node, js_jid, transport=transport, send_to=peer_jid, body=to_peer,
                                expect=2)
        try:
            online = await js.expect("online")
            # xmpp.js 0.14 knows SCRAM-SHA-1, PLAIN and ANONYMOUS, and takes the first it knows in
            # its own order: SCRAM-SHA-1, though PLAIN over TLS would be allowed. The server agrees.
            assert online["mechanism"] == "SCRAM-SHA-1", js.explain()
            assert server.logged(f"authenticated as {js_jid.split('@')[0]} with SCRAM-SHA-1")
            assert online["secure"] is True and online["tls"] in ("TLSv1.2", "TLSv1.3"), online
            full_jid = online["jid"]
            assert full_jid.startswith(js_jid + "/"), online
            await js.expect("sent")

            try:
                message = await peer.next_message(10)
            except asyncio.TimeoutError:
                pytest.fail(f"{peer_jid} got nothing from xmpp.js; {BARE_JID_HINT}\n{js.explain()}")
            assert message["type"] == "chat"
            assert message["body"] == to_peer
            assert message["from"] == full_jid

            peer.send_message(mto=message["from"], mbody=reply_full, mtype="chat")
            peer.send_message(mto=js_jid, mbody=reply_bare, mtype="chat")
            first = await js.expect("message")
            second = await js.expect("message", hint=f"the second was sent to {js_jid}; {BARE_JID_HINT}")
            assert [first["body"], second["body"]] == [reply_full, reply_bare], js.explain()
            assert first["from"] == second["from"] == peer.boundjid.full
            assert first["type"] == second["type"] == "chat"
            assert first["to"] == full_jid

            await js.expect("offline")
            assert await js.finish() == 0, js.explain()
        finally:
            await js.kill()
            await peer.logout()

    run(scenario())


def test_xmppjs_wrong_password_is_not_authorized(server: ServerProcess, node: str,
                                                 new_user: Callable[[str], str]) -> None:
    jid = new_user("jswrong")

    async def scenario() -> XmppJs:
        js = await XmppJs.start(server, node, jid, password=WRONG_PASSWORD, timeout=15)
        try:
            await js.finish()
        finally:
            await js.kill()
        return js

    js = run(scenario())
    assert js.proc.returncode == 1, js.explain()
    assert [e["event"] for e in js.events] == ["error"], js.explain()
    error = js.events[0]
    assert error["name"] == "SASLError", js.explain()
    assert error["condition"] == "not-authorized", js.explain()
    assert "not-authorized" in error["message"]
    assert server.logged(f"failed to authenticate as {jid.split('@')[0]} (not-authorized)")


def test_xmppjs_verifies_the_certificate(server: ServerProcess, node: str, new_user: Callable[[str], str]) -> None:
    """Without NODE_EXTRA_CA_CERTS, Node refuses the self-signed certificate on both ports: so the
    other tests do verify it (against the domain with STARTTLS, against 127.0.0.1 with direct TLS)."""
    jid = new_user("jscert")

    async def scenario(transport: str) -> XmppJs:
        js = await XmppJs.start(server, node, jid, transport=transport, trust_cert=False, timeout=15)
        try:
            await js.finish()
        finally:
            await js.kill()
        return js

    for transport in TRANSPORTS:
        js = run(scenario(transport))
        assert js.proc.returncode == 1, js.explain()
        assert [e["event"] for e in js.events] == ["error"], js.explain()
        assert js.events[0]["code"] == "DEPTH_ZERO_SELF_SIGNED_CERT", js.explain()


def test_xmppjs_logout_is_clean(server: ServerProcess, node: str, new_user: Callable[[str], str]) -> None:
    """RFC 6120 §4.4: the side that sent the first closing tag closes the connection once it has the
    other's. A server that closes its socket with the client's last bytes (its TLS close_notify)
    still unread makes the kernel send a TCP reset, and xmpp.js then reports ECONNRESET on a clean
    logout. Several logouts, since that depends on timing; one after the other, as xmpp.js spends
    about a second on SCRAM-SHA-1 and, on a loaded machine, may time out on its own."""
    jid = new_user("jsbye")
    transports = TRANSPORTS * 3

    async def once(transport: str) -> XmppJs:
        js = await XmppJs.start(server, node, jid, transport=transport, timeout=15)
        try:
            await js.expect("offline")
            assert await js.finish() == 0, js.explain()
        finally:
            await js.kill()
        return js

    async def all_of_them() -> list[XmppJs]:
        return [await once(transport) for transport in transports]

    resets = [f"{transport}: {js.events[-1]['socket_error']}"
              for transport, js in zip(transports, run(all_of_them()))
              if js.events[-1]["socket_error"] is not None]
    assert not resets, (f"connection reset after the server's closing tag in {len(resets)} of "
                        f"{len(transports)} logouts: {resets}")
