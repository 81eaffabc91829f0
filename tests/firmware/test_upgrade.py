"""Upgrades of the booted arm64 image, and the rollback after a release that does not start.

One copy of the image is booted three times (each boot is a minute or two of emulation):
1. first boot: the administrator registers through the invite on the console and stores a roster
   entry (data that must survive);
2. a release with another id (the same arm64 build, packed by firmware/make-release.sh) is put on the
   FAT partition as appliance-upgrade.tar (mcopy, no mount): the boot installs it before the
   appliance starts (after a snapshot of the database), the new release confirms once it serves
   (the snapshot is deleted), and the account logs in with its data;
3. a broken release (its `appliance` answers --version but exits 1 for `serve`; one that fails
   --version too is refused before the switch, tests/test_firmware_upgrade.py shows that) is
   installed the same way: the service fails until its start limit, appliance-rollback.service
   puts the snapshot back (the release never became ready) and switches back, and the account logs
   in again with its data.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.firmware.vm import BOOT_PARTITION, VM, XMPP_HELLO, disk_copy
from tests.harness import free_port
from tests.slix import Client, run
from tests.test_invites_xmpp import Invitee

ROOT = Path(__file__).resolve().parents[2]
MAKE_RELEASE = ROOT / "firmware" / "make-release.sh"
INVITE = re.compile(r"xmpp:(?P<domain>[a-z0-9.-]+)\?register;preauth=(?P<token>[A-Za-z0-9_-]+)")
CONTACT, CONTACT_NAME = "grandma@example.org", "Grandma"
BROKEN_APPLIANCE = """#!/bin/sh
# A release that installs (it answers --version) but never serves: the rollback's hostile input.
if [ "$1" = --version ]; then echo "appliance broken-for-the-test"; exit 0; fi
echo "this release is broken on purpose" >&2
exit 1
"""


@dataclass
class Guest:
    """What tests/slix.py's clients need to know about a server: the booted image's, through the
    VM's host forwards, trusting the certificate the box made on its first boot."""
    domain: str
    port: int
    tls_port: int
    cert: Path


def guest(vm: VM, domain: str, workdir: Path) -> Guest:
    pem = ssl.get_server_certificate(("127.0.0.1", vm.forwards[5223]), timeout=30)
    cert = workdir / "guest-cert.pem"
    cert.write_text(pem)
    return Guest(domain, vm.forwards[5222], vm.forwards[5223], cert)


def register_owner(box: Guest, token: str) -> str:
    """Redeem the console invite as `owner` and add a roster entry; the account's JID."""
    async def scenario() -> None:
        phone = Invitee(box, token, "owner")   # type: ignore[arg-type]  # duck-typed ServerProcess
        assert await phone.redeem() == (None, None, None)
        await phone.update_roster(CONTACT, name=CONTACT_NAME)
        await phone.get_roster()
        assert phone.client_roster[CONTACT]["name"] == CONTACT_NAME
        await phone.logout()
    run(scenario(), timeout=120)
    return f"owner@{box.domain}"


def roster_name(box: Guest, jid: str) -> str:
    """Log in as `jid` (password of tests.harness) and read back the stored roster entry's name."""
    async def scenario() -> str:
        client = Client(box, jid)  # type: ignore[arg-type]
        await client.login(timeout=60)
        try:
            return client.client_roster[CONTACT]["name"]
        finally:
            await client.logout()
    return run(scenario(), timeout=120)


def release_tarball(onedir: Path, release_id: str, workdir: Path, *, broken: bool = False) -> Path:
    source = onedir
    if broken:
        source = workdir / f"onedir-{release_id}"
        shutil.copytree(onedir, source, symlinks=True)
        (source / "appliance").write_text(BROKEN_APPLIANCE)
    tarball = workdir / f"{release_id}.tar"
    subprocess.run([str(MAKE_RELEASE), str(source), str(tarball), "--release", release_id],
                   check=True, capture_output=True, timeout=300)
    return tarball


def drop_on_boot_partition(disk: Path, tarball: Path) -> None:
    subprocess.run(["mcopy", "-o", "-i", f"{disk}{BOOT_PARTITION}", str(tarball), "::/appliance-upgrade.tar"],
                   check=True, capture_output=True, timeout=120)


def boot_partition_files(disk: Path) -> str:
    return subprocess.run(["mdir", "-b", "-i", f"{disk}{BOOT_PARTITION}", "::/"], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def test_upgrade_keeps_the_data_and_a_broken_release_is_rolled_back(image_arm64: Path, onedir_aarch64: Path,
                                                                     tmp_path: Path) -> None:
    original = (onedir_aarch64 / "RELEASE").read_text().strip()
    upgraded, broken = f"{original}.upgraded", f"{original}.broken"
    disk = disk_copy(image_arm64, tmp_path)
    vm = VM(disk, tmp_path, forwards={5222: free_port(), 5223: free_port()})
    try:
        vm.start()
        invite = vm.wait_console(INVITE, timeout=600)
        vm.wait_port(5222, timeout=300, hello=XMPP_HELLO)
        box = guest(vm, invite["domain"], tmp_path)
        owner = register_owner(box, invite["token"])
        vm.stop()

        drop_on_boot_partition(disk, release_tarball(onedir_aarch64, upgraded, tmp_path))
        vm.start()
        # the image's own release (built from this onedir, or an earlier build of it) is now previous
        switched = vm.wait_console(rf"appliance-upgrade: switched to release {re.escape(upgraded)} "
                                   r"\(previous: (?P<previous>\S+)\)", timeout=600)
        assert switched["previous"] not in ("none", upgraded)
        console = vm.console()
        assert re.search(r"appliance-upgrade: saved the database \(appliance\.sqlite3[^)]*\) to "
                         rf"/var/lib/appliance-upgrade/snapshot before switching to release {re.escape(upgraded)}",
                         console[:console.index(switched[0])]), "no snapshot before the switch"
        vm.wait_port(5222, timeout=300, hello=XMPP_HELLO)
        vm.wait_console(rf"appliance-upgrade: release {re.escape(upgraded)} serves: upgrade confirmed", timeout=120)
        assert roster_name(box, owner) == CONTACT_NAME
        vm.stop()
        assert "appliance-upgrade.tar.done" in boot_partition_files(disk)

        drop_on_boot_partition(disk, release_tarball(onedir_aarch64, broken, tmp_path, broken=True))
        vm.start()
        vm.wait_console(rf"switched to release {re.escape(broken)} \(previous: {re.escape(upgraded)}\)", timeout=600)
        vm.wait_console(rf"appliance-rollback: restored the database from before the upgrade to release "
                        rf"{re.escape(broken)}", timeout=600)
        vm.wait_console(rf"appliance-rollback: rolled back from release {re.escape(broken)} "
                        rf"to {re.escape(upgraded)}", timeout=600)
        vm.wait_port(5222, timeout=300, hello=XMPP_HELLO)
        assert roster_name(box, owner) == CONTACT_NAME
    finally:
        vm.stop()
