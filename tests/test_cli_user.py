"""`appliance user ...` in-process and as a subprocess, on real database files."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import pytest
import scramp

from appliance.cli import main
from appliance.store import users
from appliance.store.db import Database

DOMAIN = "example.local"


@pytest.fixture
def data(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def run(data, monkeypatch, capsys):
    """run("add", "alice", stdin="pw\\n") -> (exit code, stdout, stderr)."""
    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))  # not a TTY: one line is read
        code = main(["user", *argv, "--data", str(data), "--domain", DOMAIN])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def password_ok(data, name: str, password: str) -> bool:
    with Database.open(data / "appliance.sqlite3") as db:
        creds = db.read(users.scram_credentials, name, "SCRAM-SHA-256")
    _, stored_key, _, _ = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        password, iteration_count=creds.iterations, salt=creds.salt)
    return stored_key == creds.stored_key


def test_add_list_passwd_del(run, data):
    assert run("add", "Alice", stdin="s3cret\n") == (0, f"created user alice@{DOMAIN}\n", "")
    assert password_ok(data, "alice", "s3cret")
    assert run("add", f"bob@{DOMAIN.upper()}", stdin="pw\n")[0] == 0
    assert run("list")[:2] == (0, f"alice@{DOMAIN}\nbob@{DOMAIN}\n")
    code, out, _ = run("passwd", "alice", stdin="n3w\n")
    assert (code, out) == (0, f"changed the password of alice@{DOMAIN}\n")
    assert password_ok(data, "alice", "n3w") and not password_ok(data, "alice", "s3cret")
    assert run("del", "bob")[:2] == (0, f"deleted user bob@{DOMAIN} with its roster and offline messages\n")
    assert run("list")[1] == f"alice@{DOMAIN}\n"


def test_duplicate_add(run):
    run("add", "alice", stdin="pw\n")
    code, out, err = run("add", "ALICE", stdin="other\n")
    assert (code, out) == (1, "")
    assert "already exists" in err and "appliance user passwd alice" in err


def test_unknown_user(run):
    run("add", "alice", stdin="pw\n")
    for action in ("passwd", "del"):
        code, _, err = run(action, "bob", stdin="pw\n")
        assert code == 1
        assert f"no such user bob@{DOMAIN}" in err and "appliance user list" in err


def test_actions_on_missing_database_do_not_create_it(run, data):
    assert run("del", "bob")[0] == 1
    code, out, err = run("list")
    assert (code, out) == (0, "") and "appliance user add" in err
    assert not data.exists()


@pytest.mark.parametrize("name", ["a/b", "two words", "x@", "@" + DOMAIN, "a" * 1100])
def test_bad_name(run, name):
    code, _, err = run("add", name, stdin="pw\n")
    assert code == 2
    assert "invalid user name" in err or "not on this server's domain" in err


def test_wrong_domain(run):
    code, _, err = run("add", "alice@elsewhere.org", stdin="pw\n")
    assert code == 2 and f"alice@elsewhere.org is not on this server's domain {DOMAIN}" in err


def test_password_from_file(run, data, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("from-file\nsecond line ignored\n")
    assert run("add", "alice", "--password-file", str(secret))[0] == 0
    assert password_ok(data, "alice", "from-file")
    code, _, err = run("passwd", "alice", "--password-file", str(tmp_path / "missing"))
    assert code == 2 and "cannot read the password file" in err


def test_empty_password_is_refused(run):
    code, _, err = run("add", "alice", stdin="\n")
    assert code == 2 and "must not be empty" in err
    assert run("list")[1] == ""


def test_password_argument_warns(run, data):
    code, _, err = run("add", "alice", "--password", "visible")
    assert code == 0 and "visible to other users in `ps`" in err
    assert password_ok(data, "alice", "visible")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answers", "code"), [(["same", "same"], 0), (["one", "two"], 2)])
def test_prompt_on_a_tty(data, monkeypatch, capsys, answers, code):
    monkeypatch.setattr(sys, "stdin", FakeTTY())
    replies = iter(answers)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(replies))
    assert main(["user", "add", "alice", "--data", str(data), "--domain", DOMAIN]) == code
    if code == 2:
        assert "do not match" in capsys.readouterr().err


def test_works_while_the_server_holds_the_database(run, data):
    server = Database.open(data / "appliance.sqlite3")  # the running server's connections
    try:
        busy, release = threading.Event(), threading.Event()

        def long_transaction(conn):
            busy.set()
            release.wait(5)

        writer = threading.Thread(target=server.write_sync, args=(long_transaction,))
        writer.start()
        busy.wait(5)
        threading.Timer(0.3, release.set).start()  # the CLI must wait for the lock, not fail
        t0 = time.monotonic()
        assert run("add", "alice", stdin="pw\n")[0] == 0
        assert time.monotonic() - t0 >= 0.25
        writer.join()
        assert server.read(users.list_users) == ["alice"]  # the server sees the new account
        assert run("del", "alice")[0] == 0
        assert server.read(users.list_users) == []
    finally:
        server.close()


def test_as_a_subprocess(data):
    common = ["--data", str(data), "--domain", DOMAIN]
    command = [sys.executable, "-m", "appliance", "user"]
    with Database.open(data / "appliance.sqlite3") as server:
        added = subprocess.run([*command, "add", "carol", *common], input="pw\n",
                               capture_output=True, text=True, timeout=60)
        assert (added.returncode, added.stdout) == (0, f"created user carol@{DOMAIN}\n")
        assert server.read(users.user_exists, "carol")
        listed = subprocess.run([*command, "list", *common], capture_output=True, text=True, timeout=60)
        assert (listed.returncode, listed.stdout) == (0, f"carol@{DOMAIN}\n")
        bad = subprocess.run([*command, "add", "a b", *common], input="pw\n",
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "invalid user name" in bad.stderr
