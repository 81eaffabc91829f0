"""`appliance invite ...` on real database files, and the first-start invite of a real `serve`.

QR codes are read back with zbarimg, from the --png file and from the terminal rendering.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import time

import pytest

from appliance.cli import main
from appliance.net import certs
from appliance.pairing.first_start import FIRST_START_DAYS
from appliance.pairing.invites import ACCOUNT, CONTACT, new_invite, new_token, normalise_fingerprint, parse_uri
from appliance.store import invites as store
from appliance.store.db import Database
from tests.harness import ServerProcess
from tests.zbar import decode, decode_terminal, needs_zbarimg

DOMAIN = "example.local"


@pytest.fixture
def data(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def run(data, capsys):
    """run("create", "--json") -> (exit code, stdout, stderr) of `appliance invite ...`."""
    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(["invite", *argv, "--data", str(data), "--domain", DOMAIN])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def add_user(data, monkeypatch, capsys):
    def add_user(name: str) -> None:
        monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
        assert main(["user", "add", name, "--data", str(data), "--domain", DOMAIN]) == 0
        capsys.readouterr()
    return add_user


def stored(data, token: str):
    with Database.open(data / "appliance.sqlite3") as db:
        return db.read(store.get_invite, token)


def created(run, *options: str) -> dict:
    code, out, err = run("create", "--json", *options)
    assert code == 0, err
    return json.loads(out)


def test_create_prints_uri_landing_page_and_qr(run, data, tmp_path):
    code, out, _ = run("create", "--png", str(tmp_path / "invite.png"))
    assert code == 0
    uri, web, summary = out.splitlines()[:3]
    parsed = parse_uri(uri)
    assert (parsed.jid, parsed.action) == (DOMAIN, "register")
    # The certificate was made on the spot, and the URI pins it.
    assert parsed.fingerprint == normalise_fingerprint(certs.fingerprint_sha256(data / "tls" / "cert.pem"))
    assert web.startswith("web page: http://") and web.endswith(f":5280/invite/{parsed.token}")
    assert summary.startswith("account invite, single use, expires ") and "(in 7 days)" in summary
    invite = stored(data, parsed.token)
    assert (invite.kind, invite.inviter, invite.max_uses, invite.admin) == (ACCOUNT, None, 1, False)
    assert abs(invite.expires - invite.created - 7 * 86400) < 1


@needs_zbarimg
def test_png_and_terminal_qr_decode_to_the_printed_uri(run, tmp_path):
    code, out, _ = run("create", "--png", str(tmp_path / "invite.png"), "--svg", str(tmp_path / "invite.svg"))
    assert code == 0
    uri = out.splitlines()[0]
    assert decode(tmp_path / "invite.png") == uri
    assert decode_terminal(out, tmp_path) == uri
    assert (tmp_path / "invite.svg").read_bytes().startswith(b"<svg")


def test_json_for_scripts(run, data):
    before = time.time()
    made = created(run, "--uses", "3", "--expires", "12h")
    assert {"token", "uri", "landing_url", "expires", "kind", "uses", "max_uses"} <= made.keys()
    assert (made["kind"], made["uses"], made["max_uses"], made["state"]) == (ACCOUNT, 0, 3, "usable")
    assert made["landing_url"].endswith(f"/invite/{made['token']}")
    assert parse_uri(made["uri"]).token == made["token"]
    expires = stored(data, made["token"]).expires
    assert before + 12 * 3600 - 1 <= expires <= time.time() + 12 * 3600
    assert made["expires"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))


def test_contact_invite_from_an_existing_user(run, data, add_user):
    add_user("alice")
    made = created(run, "--contact", "Alice", "--unlimited", "--expires", "never")
    assert made["uri"].startswith(f"xmpp:alice@{DOMAIN}?roster;preauth={made['token']};ibr=y;tls-sha256=")
    invite = stored(data, made["token"])
    assert (invite.kind, invite.inviter, invite.max_uses, invite.expires) == (CONTACT, "alice", 0, None)


def test_admin_invite_with_a_preset_username(run, data):
    made = created(run, "--admin", "--username", "Bob", "--expires", "30m")
    assert made["uri"].startswith(f"xmpp:bob@{DOMAIN}?register;preauth=")
    invite = stored(data, made["token"])
    assert (invite.username, invite.admin) == ("bob", True)
    assert abs(invite.expires - invite.created - 1800) < 1


def test_list_show_revoke(run, data, tmp_path):
    first, second = created(run), created(run, "--uses", "0")
    code, out, _ = run("list")
    assert code == 0 and out.splitlines()[0].split() == ["TOKEN", "KIND", "INVITER", "USERNAME", "USES",
                                                        "EXPIRES", "STATE"]
    assert {line.split()[0] for line in out.splitlines()[1:]} == {first["token"][:8], second["token"][:8]}
    assert "0/unlimited" in out
    # revoke by the prefix `list` shows
    assert run("revoke", first["token"][:8])[:2] == (0, f"revoked invite {first['token'][:8]}: account invite\n")
    with Database.open(data / "appliance.sqlite3") as db, pytest.raises(store.InviteUnusable, match="revoked"):
        db.write_sync(store.redeem, first["token"], time.time())
    assert [i["token"] for i in json.loads(run("list", "--json")[1])] == [second["token"]]
    listed = {i["token"]: i["state"] for i in json.loads(run("list", "--all", "--json")[1])}
    assert listed == {first["token"]: "revoked", second["token"]: "usable"}
    code, _, err = run("show", first["token"])
    assert code == 1 and "cannot be used: revoked" in err
    code, out, _ = run("show", second["token"], "--no-qr")
    assert code == 0 and out.splitlines()[0] == second["uri"] and "█" not in out


@needs_zbarimg
def test_show_prints_the_qr_again(run, tmp_path):
    made = created(run)
    code, out, _ = run("show", made["token"], "--png", str(tmp_path / "again.png"))
    assert code == 0
    assert decode(tmp_path / "again.png") == made["uri"] == decode_terminal(out, tmp_path)


def test_unknown_and_ambiguous_tokens(run, data):
    assert run("revoke", "nosuchtoken")[0] == 1
    created(run)  # makes the database
    with Database.open(data / "appliance.sqlite3") as db:
        base = new_invite(ACCOUNT, inviter=None, now=time.time())
        for token in ("abcdEFGH" + "x" * 16, "abcdIJKL" + "y" * 16):
            db.write_sync(store.insert_invite, dataclasses.replace(base, token=token))
    code, _, err = run("revoke", "abcd")
    assert code == 2 and "start of 2 invites' tokens" in err
    code, _, err = run("show", "zzzzzz")
    assert code == 1 and "no invite 'zzzzzz'" in err and "appliance invite list --all" in err
    assert run("revoke", "abcdEF")[0] == 0 and stored(data, "abcdEFGH" + "x" * 16).revoked
    assert not stored(data, "abcdIJKL" + "y" * 16).revoked


def test_unwritable_image_leaves_no_invite(run, data, tmp_path):
    code, out, err = run("create", "--png", str(tmp_path / "missing-dir" / "invite.png"))
    assert (code, out) == (1, "") and err.splitlines()[-1].startswith("appliance invite create: [Errno 2]")
    with Database.open(data / "appliance.sqlite3") as db:
        assert db.read(store.list_invites, time.time(), True) == []


def test_empty_list_does_not_create_a_database(run, data):
    code, out, err = run("list")
    assert (code, out) == (0, "") and "appliance invite create" in err
    assert not data.exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--expires", "3x"], "bad --expires '3x'"),
    (["--expires", "0d"], "bad --expires '0d'"),
    (["--uses", "-1"], "--uses must be 0 (unlimited) or more"),
    (["--uses", "two"], "invalid int value"),
    (["--uses", "2", "--unlimited"], "not allowed with argument"),
    (["--contact", "alice", "--username", "bob"], "--contact makes a contact invite"),
    (["--contact", "alice", "--admin"], "--contact makes a contact invite"),
    (["--contact", "nobody"], f"no such user nobody@{DOMAIN}"),
    (["--username", "a b"], "invalid user name"),
    (["--username", "alice"], f"user alice@{DOMAIN} already exists"),
])
def test_bad_options(run, data, add_user, options, message):
    add_user("alice")
    code, out, err = run("create", *options)
    assert (code, out) == (2, "") and message in err
    with Database.open(data / "appliance.sqlite3") as db:
        assert db.read(store.list_invites, time.time(), True) == []


def test_while_the_server_runs(fresh_server):
    fresh_server.start()
    made = fresh_server.cli("invite", "create", "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    assert parse_uri(json.loads(made.stdout)["uri"]).fingerprint == normalise_fingerprint(
        certs.fingerprint_sha256(fresh_server.cert))  # the pin of the certificate the server uses
    revoked = fresh_server.cli("invite", "revoke", token)
    assert revoked.returncode == 0, revoked.stderr
    with Database.open(fresh_server.data / "appliance.sqlite3") as db:
        with pytest.raises(store.InviteUnusable, match="revoked"):
            db.read(store.usable_invite, token, time.time())


NOTICE = "No account exists yet."


def first_start_output(server: ServerProcess, since: int) -> str:
    """What the server printed since byte `since` of its log, once its first-start notice is out:
    both the printout on stdout and the WARNING log line after it end with the hint (waiting for
    the first alone raced with the log line, which is written just after)."""
    deadline = time.monotonic() + 10
    while (out := server.log_path.read_bytes()[since:].decode()).count("appliance invite create --admin") < 2:
        assert time.monotonic() < deadline, f"no first-start invite in the log:\n{out}"
        time.sleep(0.05)
    return out


def test_first_start_invite(fresh_server):
    server = fresh_server.start()
    out = first_start_output(server, 0)
    uri = out[out.index(NOTICE):].splitlines()[1]
    parsed = parse_uri(uri)
    assert (parsed.jid, parsed.action) == (server.domain, "register")
    assert parsed.fingerprint == normalise_fingerprint(certs.fingerprint_sha256(server.cert))
    assert f"WARNING appliance.pairing: no account yet: administrator invite {uri}" in out
    assert "single use, expires" in out and f"(in {FIRST_START_DAYS} days)" in out
    with Database.open(server.data / "appliance.sqlite3") as db:
        invite = db.read(store.get_invite, parsed.token)
    assert (invite.kind, invite.admin, invite.max_uses, invite.inviter) == (ACCOUNT, True, 1, None)
    assert abs(invite.expires - invite.created - FIRST_START_DAYS * 86400) < 1

    server.stop()
    again_from = server.log_path.stat().st_size
    server.start()
    again = first_start_output(server, again_from)
    assert again[again.index(NOTICE):].splitlines()[1] == uri  # the same invite, not a new one
    listed = json.loads(server.cli("invite", "list", "--all", "--json").stdout)
    assert [i["token"] for i in listed] == [parsed.token]

    server.stop()
    server.add_user("alice")
    later_from = server.log_path.stat().st_size
    server.start()
    assert server.logged(f"serving {server.domain}")
    server.stop()  # the notice comes right after the listeners; by now it would be there
    later = server.log_path.read_bytes()[later_from:].decode()
    assert "stopped; database closed cleanly" in later
    assert NOTICE not in later and "administrator invite" not in later


@needs_zbarimg
def test_first_start_qr_scans(fresh_server, tmp_path):
    out = first_start_output(fresh_server.start(), 0)
    notice = out[out.index(NOTICE):]
    assert decode_terminal(notice, tmp_path) == notice.splitlines()[1]


def test_tokens_never_look_like_options():
    # `appliance invite revoke -xyz...` would be taken for an option; 1 token in 64 would start so.
    assert not [token for token in (new_token() for _ in range(3000)) if token.startswith("-")]
