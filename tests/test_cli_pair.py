"""`appliance pair` as a subprocess against the real server: invite URIs and QR images written by
`appliance invite create --png`, and its errors (used invite, wrong certificate pin, no QR code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from appliance.client.state import ClientState
from appliance.pairing.invites import parse_uri
from tests.harness import ServerProcess


def invite(server: ServerProcess, *options: str) -> str:
    result = server.cli("invite", "create", "--json", *options)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["uri"]


def pair(server: ServerProcess, data: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", "pair", *argv, "--data-dir", str(data),
                           "--host", server.host, "--port", str(server.port), "--timeout", "10"],
                          capture_output=True, text=True, timeout=60)


def test_pair_with_uri_stores_the_account_and_a_used_invite_fails(server: ServerProcess, tmp_path: Path) -> None:
    uri = invite(server, "--username", "carla")
    result = pair(server, tmp_path / "c", uri)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"paired: carla@{server.domain}", f"data: {tmp_path / 'c'}"]
    account = ClientState(tmp_path / "c").load_account()
    assert account.jid == f"carla@{server.domain}" and account.fingerprint == parse_uri(uri).fingerprint
    again = pair(server, tmp_path / "d", uri)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.startswith("appliance pair: The invite cannot be used") and "used up" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert ClientState(tmp_path / "d").load_account() is None


def test_pair_with_qr_image_written_by_invite_create(server: ServerProcess, tmp_path: Path) -> None:
    png = tmp_path / "invite.png"
    result = server.cli("invite", "create", "--png", str(png), "--no-qr")
    assert result.returncode == 0, result.stderr
    paired = pair(server, tmp_path / "q", "--qr", str(png), "--username", "quentin")
    assert paired.returncode == 0, paired.stderr
    assert paired.stdout.startswith(f"paired: quentin@{server.domain}\n")


def test_wrong_pin_is_refused_before_anything_is_sent(server: ServerProcess, tmp_path: Path) -> None:
    uri = invite(server, "--username", "pia")
    fingerprint = parse_uri(uri).fingerprint
    wrong = uri.replace(fingerprint, ("00" if not fingerprint.startswith("00") else "11") + fingerprint[2:])
    result = pair(server, tmp_path / "p", wrong)
    assert result.returncode == 1 and "not the server that made the invite" in result.stderr
    assert pair(server, tmp_path / "p", uri).returncode == 0  # the invite was not used


def test_garbage_file_and_garbage_uri_fail_with_one_line(server: ServerProcess, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    result = pair(server, tmp_path / "g", "--qr", str(garbage))
    assert (result.returncode, result.stderr.count("\n")) == (1, 1)
    assert "is not an image" in result.stderr
    missing = pair(server, tmp_path / "g", "--qr", str(tmp_path / "missing.png"))
    assert missing.returncode == 1 and "there is no file" in missing.stderr
    nonsense = pair(server, tmp_path / "g", "https://example.org/")
    assert nonsense.returncode == 1 and "not an invite link" in nonsense.stderr


def test_usage_errors_exit_2(server: ServerProcess, tmp_path: Path) -> None:
    assert pair(server, tmp_path / "u").returncode == 2  # neither URI nor --qr
    both = pair(server, tmp_path / "u", "xmpp:x?register;preauth=t", "--qr", "a.png")
    assert both.returncode == 2 and "not allowed with" in both.stderr
