"""The image's Wi-Fi file (firmware/rootfs/usr/lib/appliance/wifi-from-boot): wifi.txt on the boot
partition becomes wpa_supplicant's configuration, and the passphrase leaves the FAT partition.
The real script runs under /bin/sh (dash, as on the image) with its paths moved to a temp dir."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "firmware/rootfs/usr/lib/appliance/wifi-from-boot"


def apply(tmp_path: Path, text: str | bytes) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """Write wifi.txt, run the script; (result, boot dir, wpa_supplicant conf path)."""
    boot, conf_dir = tmp_path / "boot", tmp_path / "wpa"
    boot.mkdir()
    data = text.encode() if isinstance(text, str) else text
    (boot / "wifi.txt").write_bytes(data)
    env = {"PATH": os.environ["PATH"], "WIFI_BOOT_DIR": str(boot), "WIFI_CONF_DIR": str(conf_dir)}
    result = subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    return result, boot, conf_dir / "wpa_supplicant-wlan0.conf"


def network_block(conf: Path) -> dict[str, str]:
    lines = conf.read_text().splitlines()
    inside = lines[lines.index("network={") + 1:lines.index("}")]
    return dict(line.strip().split("=", 1) for line in inside)


def test_good_file_is_applied_and_the_passphrase_leaves_the_boot_partition(tmp_path: Path) -> None:
    result, boot, conf = apply(tmp_path, "# home\nssid=Home Net\npsk=correct horse\ncountry=de\n")
    assert result.returncode == 0, result.stderr
    assert "Home Net" in result.stdout
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert "country=DE\n" in text
    network = network_block(conf)
    assert bytes.fromhex(network["ssid"]) == b"Home Net"
    assert network["psk"] == '"correct horse"'
    assert not (boot / "wifi.txt").exists()
    applied = (boot / "wifi.txt.applied").read_text()
    assert "ssid=Home Net" in applied and "country=de" in applied
    assert "correct horse" not in applied


def test_odd_characters_windows_line_ends_and_bom(tmp_path: Path) -> None:
    ssid = 'Café "5G" = #1 \\ $x'
    psk = 'p"a$s=w#o\\rd `x` \'q\''
    data = "\ufeff".encode() + f"SSID={ssid}\r\nPassword={psk}\r\n".encode()
    result, boot, conf = apply(tmp_path, data)
    assert result.returncode == 0, result.stderr
    network = network_block(conf)
    assert bytes.fromhex(network["ssid"]).decode() == ssid
    assert network["psk"] == f'"{psk}"'
    assert psk not in (boot / "wifi.txt.applied").read_text()


def test_empty_psk_means_an_open_network(tmp_path: Path) -> None:
    result, _, conf = apply(tmp_path, "ssid=Cafe\npsk=\n")
    assert result.returncode == 0, result.stderr
    assert network_block(conf)["key_mgmt"] == "NONE"
    assert "psk" not in network_block(conf)


@pytest.mark.parametrize("text, reason", [
    ("ssid=Home\n", "no psk= line"),
    ("psk=long enough\n", "no ssid= line"),
    ("ssid=Home\npsk=short\n", "8 to 63 characters, not 5"),
    ("ssid=Home\npsk=" + "x" * 64 + "\n", "8 to 63 characters, not 64"),
    ("ssid=Home\npsk=pässwort123\n", "printable ASCII"),
    ("ssid=" + "n" * 33 + "\npsk=long enough\n", "longer than 32 bytes"),
    ("ssid=Home\npsk=long enough\ncountry=Germany\n", "two letters"),
    ("ssid=Home\npsk=long enough\nchannel=6\n", "unknown key 'channel'"),
    ("ssid Home\n", "is not key=value"),
])
def test_bad_file_writes_nothing_and_stays(tmp_path: Path, text: str, reason: str) -> None:
    result, boot, conf = apply(tmp_path, text)
    assert result.returncode == 1
    assert reason in result.stderr
    assert "Wi-Fi not configured" in result.stderr
    assert not conf.exists()
    assert (boot / "wifi.txt").read_text() == text
    assert not (boot / "wifi.txt.applied").exists()
