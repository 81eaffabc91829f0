"""`appliance chat` as a person uses it: two terminal clients paired with `appliance pair`
(anna through an account invite, bob through a contact invite from anna), each running the
interactive `appliance chat` in its own tmux session, typing with send-keys and reading the screen
with capture-pane. Also the scripted `chat send` / `chat contacts`."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from appliance.client.terminal import NEEDS_PAIRING, READY
from tests.harness import ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is missing: install Debian's tmux (scripts/test.sh does)")


def appliance(*argv: str) -> list[str]:
    return [sys.executable, "-m", "appliance", *argv]


def paired(server: ServerProcess, data: Path, username: str, *invite_options: str) -> None:
    made = server.cli("invite", "create", "--json", *invite_options)
    assert made.returncode == 0, made.stderr
    pair_with(server, data, json.loads(made.stdout)["uri"], username)


def contact_invite(data: Path) -> str:
    made = subprocess.run(appliance("chat", "invite", "--data-dir", str(data)), capture_output=True,
                          text=True, timeout=90)
    assert made.returncode == 0, made.stderr
    return made.stdout.splitlines()[0]


def pair_with(server: ServerProcess, data: Path, uri: str, username: str) -> None:
    result = subprocess.run(appliance("pair", uri, "--data-dir", str(data), "--host", server.host,
                                      "--port", str(server.port), "--timeout", "10", "--username", username),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


class Tmux:
    """A tmux server of the test's own (its own socket), killed at the end."""

    def __init__(self) -> None:
        self.socket = f"appliance-test-{uuid.uuid4().hex[:12]}"

    def run(self, *argv: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *argv], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, name: str, command: list[str]) -> None:
        self.run("new-session", "-d", "-s", name, "-x", "200", "-y", "50", shlex.join(command))
        self.run("set-option", "-t", name, "remain-on-exit", "on")

    def type(self, name: str, line: str) -> None:
        self.run("send-keys", "-t", name, "-l", line)
        self.run("send-keys", "-t", name, "Enter")

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-J", "-t", name, "-S", "-200")

    def wait_for(self, name: str, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text not in (screen := self.screen(name)):
            assert time.monotonic() < deadline, f"{text!r} did not appear in {name}'s pane:\n{screen}"
            time.sleep(0.2)
        return screen

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def test_two_people_chat_encrypted_in_tmux(server: ServerProcess, tmp_path: Path) -> None:
    anna, bob = tmp_path / "anna", tmp_path / "bob"
    paired(server, anna, "anna")
    bob_invite = contact_invite(anna)  # carries anna's key fingerprint: bob sees it verified
    pair_with(server, bob, bob_invite, "bob")
    tmux = Tmux()
    try:
        tmux.start("anna", appliance("chat", "--data-dir", str(anna)))
        tmux.start("bob", appliance("chat", "--data-dir", str(bob)))
        tmux.wait_for("anna", READY)
        tmux.wait_for("bob", READY)
        tmux.type("anna", f"/to bob@{server.domain}")
        tmux.type("anna", "hello bob, it is anna")
        tmux.wait_for("anna", f"(sent to bob@{server.domain}, encrypted)")
        tmux.wait_for("bob", f"anna@{server.domain} [e2e verified]: hello bob, it is anna")
        tmux.type("bob", f"/to anna@{server.domain}")
        tmux.type("bob", "hi anna")
        tmux.wait_for("anna", f"bob@{server.domain} [e2e tofu]: hi anna")  # anna never compared bob's key
        tmux.type("bob", f"/keys anna@{server.domain}")
        tmux.wait_for("bob", f"anna@{server.domain} device ")
        tmux.type("anna", "/quit")
        tmux.wait_for("anna", "* bye")
        assert "Traceback" not in tmux.screen("anna") + tmux.screen("bob")
    finally:
        tmux.kill()


def test_chat_send_is_acknowledged_and_needs_keys_or_plain(server: ServerProcess, tmp_path: Path) -> None:
    carl = tmp_path / "carl"
    paired(server, carl, "carl")
    server.add_user("dora")  # an account without a paired device: no keys
    to = f"dora@{server.domain}"
    refused = subprocess.run(appliance("chat", "send", to, "hi", "--data-dir", str(carl)),
                             capture_output=True, text=True, timeout=90)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("appliance chat: ") and "no encryption keys" in refused.stderr
    assert "--plain" in refused.stderr
    sent = subprocess.run(appliance("chat", "send", to, "hi in plain", "--plain", "--data-dir", str(carl)),
                          capture_output=True, text=True, timeout=90)
    assert sent.returncode == 0, sent.stderr
    unpaired = subprocess.run(appliance("chat", "send", to, "x", "--data-dir", str(tmp_path / "none")),
                              capture_output=True, text=True, timeout=30)
    assert unpaired.returncode == 1 and unpaired.stderr.count("\n") == 1 and "pair first" in unpaired.stderr


def test_follow_prints_what_chat_send_sends_and_contacts_lists_keys(server: ServerProcess, tmp_path: Path) -> None:
    erik, fay = tmp_path / "erik", tmp_path / "fay"
    paired(server, erik, "erik")
    paired(server, fay, "fay", "--contact", "erik")
    follow = subprocess.Popen(appliance("chat", "follow", "--data-dir", str(erik)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert [follow.stderr.readline().strip() for _ in range(3)] == ["* connecting", "* online", READY]
        sent = subprocess.run(appliance("chat", "send", f"erik@{server.domain}", "order 42 ready",
                                        "--data-dir", str(fay)), capture_output=True, text=True, timeout=90)
        assert sent.returncode == 0, sent.stderr
        line = follow.stdout.readline()
        assert line.endswith(f"fay@{server.domain} [e2e tofu]: order 42 ready\n") and line.startswith("[")
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=15) == 0, follow.stderr.read()
    contacts = subprocess.run(appliance("chat", "contacts", "--data-dir", str(fay)),
                              capture_output=True, text=True, timeout=90)
    assert contacts.returncode == 0, contacts.stderr
    assert contacts.stdout.startswith(f"erik@{server.domain} (both): device ") and " tofu " in contacts.stdout


def test_refused_credentials_say_to_pair_again(server: ServerProcess, tmp_path: Path) -> None:
    gus = tmp_path / "gus"
    paired(server, gus, "gus")
    assert server.cli("user", "del", "gus").returncode == 0
    result = subprocess.run(appliance("chat", "send", f"anna@{server.domain}", "x", "--data-dir", str(gus)),
                            capture_output=True, text=True, timeout=90)
    assert (result.returncode, result.stderr) == (1, f"appliance chat: {NEEDS_PAIRING}\n")


def test_chat_invite_pairs_a_verified_contact(server: ServerProcess, tmp_path: Path) -> None:
    hana, ivo = tmp_path / "hana", tmp_path / "ivo"
    paired(server, hana, "hana")
    made = subprocess.run(appliance("chat", "invite", "--data-dir", str(hana)), capture_output=True,
                          text=True, timeout=90)
    assert made.returncode == 0, made.stderr
    uri = made.stdout.splitlines()[0]
    assert uri.startswith(f"xmpp:hana@{server.domain}?roster;") and ";e2e-sid-" in uri
    assert "█" in made.stdout or "▀" in made.stdout  # the terminal QR code
    pair_with(server, ivo, uri, "ivo")
    contacts = subprocess.run(appliance("chat", "contacts", "--data-dir", str(ivo)),
                              capture_output=True, text=True, timeout=90)
    assert contacts.returncode == 0, contacts.stderr
    assert contacts.stdout.startswith(f"hana@{server.domain} (both): device ") and " verified " in contacts.stdout
