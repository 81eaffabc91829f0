"""The image's upgrade and rollback scripts, run on this machine against a temporary /opt/appliance.

firmware/make-release.sh packs small releases whose `appliance` is a shell script printing its
version (the scripts only need a program that runs); the scripts' paths and systemctl are redirected
with APPLIANCE_OPT, APPLIANCE_UPGRADE_STATE, APPLIANCE_DATA and APPLIANCE_SYSTEMCTL. The stand-in
systemctl is a real program that records its arguments, answers `show` with the ActiveState the test
chose and, on `stop`, runs the test's on-stop script (what the appliance writes as it stops). The
database snapshot is checked on a stand-in database file: the scripts copy bytes, they never open it.
tests/firmware/test_upgrade.py does the same on the booted image with real releases.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE_RELEASE = ROOT / "firmware" / "make-release.sh"
SCRIPTS = ROOT / "firmware" / "rootfs" / "usr" / "lib" / "appliance"
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/systemctl.log"
if [ "$1" = show ]; then cat "$(dirname "$0")/active-state"; fi
if [ "$1" = stop ] && [ -f "$(dirname "$0")/on-stop" ]; then sh "$(dirname "$0")/on-stop"; fi
"""
DATABASE = "appliance.sqlite3"


class Box:
    """A temporary tree standing for the image's /opt/appliance and /var/lib/appliance-upgrade."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.opt, self.state, self.bin = root / "opt", root / "state", root / "bin"
        self.data = root / "data"
        self.bin.mkdir()
        self.data.mkdir()
        systemctl = self.bin / "systemctl"
        systemctl.write_text(FAKE_SYSTEMCTL)
        systemctl.chmod(0o755)
        self.set_active_state("failed")

    def env(self) -> dict[str, str]:
        return {**os.environ, "APPLIANCE_OPT": str(self.opt), "APPLIANCE_UPGRADE_STATE": str(self.state),
                "APPLIANCE_DATA": str(self.data), "APPLIANCE_SYSTEMCTL": str(self.bin / "systemctl")}

    def set_active_state(self, state: str) -> None:
        (self.bin / "active-state").write_text(state + "\n")

    def systemctl_calls(self) -> list[str]:
        log = self.bin / "systemctl.log"
        return log.read_text().splitlines() if log.exists() else []

    def run(self, script: str, *args: str, state_tmpfs: str = "") -> subprocess.CompletedProcess[str]:
        """Run a script; with state_tmpfs (a size), its state directory is a tmpfs of that size, mounted
        in a mount namespace of its own (a user namespace maps the caller to root)."""
        command = [str(SCRIPTS / script), *args]
        if state_tmpfs:
            self.state.mkdir(exist_ok=True)
            command = ["unshare", "--map-root-user", "--mount", "sh", "-c",
                       f'mount -t tmpfs -o size={state_tmpfs} tmpfs "$0" && exec "$@"', str(self.state), *command]
        return subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=60)

    def on_stop(self, shell: str) -> None:
        (self.bin / "on-stop").write_text(shell + "\n")

    def database(self, name: str = DATABASE) -> Path:
        return self.data / name

    def release(self, release_id: str, *, version_exit: int = 0, outward_link: bool = False) -> Path:
        """An upgrade tarball for `release_id` made by make-release.sh from a small onedir."""
        onedir = self.root / "src" / release_id
        (onedir / "_internal").mkdir(parents=True)
        (onedir / "_internal" / "library.so").write_bytes(b"\x7fELF pretend " + release_id.encode())
        (onedir / "_internal" / "library.so.1").symlink_to("library.so")
        if outward_link:
            (onedir / "_internal" / "system").symlink_to("../../../../etc")
        program = onedir / "appliance"
        program.write_text(f"#!/bin/sh\necho 'appliance {release_id}'\nexit {version_exit}\n")
        program.chmod(0o755)
        (onedir / "RELEASE").write_text("wrong-id\n")   # make-release.sh --release writes the right one
        tarball = self.root / f"{release_id}.tar"
        subprocess.run([str(MAKE_RELEASE), str(onedir), str(tarball), "--release", release_id],
                       check=True, capture_output=True, timeout=60)
        return tarball

    def link(self, name: str) -> str | None:
        path = self.opt / name
        return os.readlink(path).split("/")[-1] if path.is_symlink() else None

    def releases(self) -> list[str]:
        return sorted(p.name for p in (self.opt / "releases").iterdir()) if (self.opt / "releases").exists() else []


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def installed(box: Box, *release_ids: str) -> None:
    for release_id in release_ids:
        result = box.run("upgrade", str(box.release(release_id)))
        assert result.returncode == 0, result.stderr


def rewrite_tar(tarball: Path, change: dict[str, bytes]) -> None:
    """Replace (or add) members' contents, keeping the manifest the release was packed with."""
    with tarfile.open(tarball) as original:
        members = [(m, original.extractfile(m).read() if m.isfile() else None) for m in original.getmembers()]
    names = {m.name for m, _ in members}
    with tarfile.open(tarball, "w") as out:
        for member, data in members:
            data = change.get(member.name, data)
            member.size = len(data) if data is not None else 0
            out.addfile(member, io.BytesIO(data) if data is not None else None)
        for name, data in change.items():
            if name not in names:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))


def test_upgrade_switches_and_restarts_the_service(box: Box) -> None:
    installed(box, "1.0")
    assert box.link("current") == "1.0" and box.link("previous") is None
    result = box.run("upgrade", str(box.release("2.0")))
    assert result.returncode == 0, result.stderr
    assert "release 2.0 runs: appliance 2.0" in result.stdout
    assert (box.link("current"), box.link("previous")) == ("2.0", "1.0")
    assert (box.opt / "current" / "appliance").read_text().count("appliance 2.0") == 1
    assert box.systemctl_calls()[-2:] == ["reset-failed appliance.service", "restart appliance.service"]
    # unpacked under a temporary name beside the releases, and nothing of it is left
    assert box.releases() == ["1.0", "2.0"]


def test_at_most_two_releases_are_kept(box: Box) -> None:
    installed(box, "1.0", "2.0", "3.0")
    assert box.releases() == ["2.0", "3.0"]
    assert (box.link("current"), box.link("previous")) == ("3.0", "2.0")


@pytest.mark.parametrize("member, content, complaint", [
    ("2.0/_internal/library.so", b"corrupted on the way", "release 2.0 does not match its SHA256SUMS"),
    ("2.0/_internal/extra.py", b"import os", "release 2.0 has files its SHA256SUMS does not list"),
], ids=["changed file", "unlisted file"])
def test_a_release_that_does_not_match_its_manifest_is_refused(box: Box, member: str, content: bytes,
                                                                complaint: str) -> None:
    installed(box, "1.0")
    tarball = box.release("2.0")
    rewrite_tar(tarball, {member: content})
    result = box.run("upgrade", str(tarball))
    assert result.returncode == 1
    assert complaint in result.stderr
    assert box.link("current") == "1.0" and box.releases() == ["1.0"]


def test_a_member_outside_the_release_directory_is_refused_before_unpacking(box: Box) -> None:
    tarball = box.release("2.0")
    rewrite_tar(tarball, {"2.0/../../escaped": b"x"})
    result = box.run("upgrade", str(tarball))
    assert result.returncode == 1
    assert "leaves its directory" in result.stderr
    assert not (box.root / "escaped").exists() and not (box.opt / "escaped").exists()
    assert box.link("current") is None


def test_a_symlink_out_of_the_release_is_refused(box: Box) -> None:
    result = box.run("upgrade", str(box.release("2.0", outward_link=True)))
    assert result.returncode == 1
    assert "release 2.0: symlink" in result.stderr and "_internal/system points outside it" in result.stderr
    assert box.link("current") is None and box.releases() == []


def test_a_release_whose_program_does_not_run_is_refused_before_the_switch(box: Box) -> None:
    installed(box, "1.0")
    calls = len(box.systemctl_calls())
    result = box.run("upgrade", str(box.release("2.0", version_exit=1)))
    assert result.returncode == 1
    assert "release 2.0 does not run: 'appliance --version' failed (exit 1): appliance 2.0" in result.stderr
    assert box.link("current") == "1.0" and box.releases() == ["1.0"]
    assert len(box.systemctl_calls()) == calls   # the running appliance was left alone


def test_rollback_switches_back_records_the_failure_and_starts_the_service(box: Box) -> None:
    installed(box, "1.0", "2.0")
    result = box.run("rollback")
    assert result.returncode == 0, result.stderr
    assert "failed on release 2.0: rolling back to release 1.0" in result.stdout
    assert (box.link("current"), box.link("previous")) == ("1.0", "2.0")
    assert "rolled back to 1.0" in (box.state / "failed-2.0").read_text()
    assert box.systemctl_calls()[-2:] == ["reset-failed appliance.service", "--no-block start appliance.service"]
    # the failed release is not installed again, e.g. from the boot partition
    refused = box.run("upgrade", str(box.root / "2.0.tar"))
    assert refused.returncode == 1 and "release 2.0 failed to start here before" in refused.stderr


def test_rollback_waits_while_the_service_restarts_itself(box: Box) -> None:
    installed(box, "1.0", "2.0")
    box.set_active_state("activating")
    result = box.run("rollback")
    assert result.returncode == 0
    assert "appliance.service is activating (restarting by itself): nothing to roll back yet" in result.stdout
    assert box.link("current") == "2.0" and not box.state.joinpath("failed-2.0").exists()


def test_rollback_without_a_previous_release_changes_nothing(box: Box) -> None:
    installed(box, "1.0")
    result = box.run("rollback")
    assert result.returncode == 1
    assert "there is no previous release to go back to" in result.stdout
    assert box.link("current") == "1.0" and not box.state.joinpath("failed-1.0").exists()


def test_rollback_does_not_go_back_to_a_release_that_failed_too(box: Box) -> None:
    installed(box, "1.0", "2.0")
    assert box.run("rollback").returncode == 0          # 2.0 failed: back on 1.0
    result = box.run("rollback")                        # now 1.0 fails as well
    assert result.returncode == 1
    assert "the previous release 2.0 failed before it: not switching" in result.stdout
    assert box.link("current") == "1.0"


def test_upgrade_from_the_boot_partition_marks_the_file(box: Box) -> None:
    installed(box, "1.0")
    calls = len(box.systemctl_calls())
    dropped = box.root / "appliance-upgrade.tar"
    box.release("2.0").rename(dropped)
    result = box.run("upgrade", "--from-boot", str(dropped))
    assert result.returncode == 0, result.stderr
    assert box.link("current") == "2.0" and len(box.systemctl_calls()) == calls   # not restarted
    assert not dropped.exists() and dropped.with_name("appliance-upgrade.tar.done").exists()

    box.release("3.0", version_exit=1).rename(dropped)
    result = box.run("upgrade", "--from-boot", str(dropped))
    assert result.returncode == 0
    reason = dropped.with_name("appliance-upgrade.tar.failed.txt").read_text()
    assert "the upgrade was not installed" in reason and "release 3.0 does not run" in reason
    assert dropped.with_name("appliance-upgrade.tar.failed").exists() and not dropped.exists()
    assert box.link("current") == "2.0" and box.releases() == ["1.0", "2.0"]


def test_make_release_refuses_a_directory_without_a_program(tmp_path: Path) -> None:
    result = subprocess.run([str(MAKE_RELEASE), str(tmp_path), str(tmp_path / "out.tar")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not a onedir build" in result.stderr
    assert not (tmp_path / "out.tar").exists()


# The database snapshot: taken with the service stopped, dropped once the new release served, put back
# when a release that never became ready is rolled back.

def write_database(box: Box, content: bytes, *, wal: bytes | None = None) -> None:
    box.database().write_bytes(content)
    box.database().chmod(0o600)
    if wal is not None:
        box.database(DATABASE + "-wal").write_bytes(wal)


def test_upgrade_stops_the_service_snapshots_the_database_and_marks_the_release_pending(box: Box) -> None:
    installed(box, "1.0")
    write_database(box, b"schema 5: the family's chats", wal=b"frames of the last commits")
    owner = 4242 if os.geteuid() == 0 else os.getuid()   # root keeps another owner: shows cp -p
    os.chown(box.database(), owner, -1)
    box.on_stop(f"printf ' +checkpointed at stop' >> '{box.database()}'")
    result = box.run("upgrade", str(box.release("2.0")))
    assert result.returncode == 0, result.stderr
    snapshot = box.state / "snapshot"
    # taken after the stop: it holds what the appliance wrote as it stopped
    assert (snapshot / DATABASE).read_bytes() == b"schema 5: the family's chats +checkpointed at stop"
    assert (snapshot / (DATABASE + "-wal")).read_bytes() == b"frames of the last commits"
    assert not (snapshot / (DATABASE + "-shm")).exists()
    copied = (snapshot / DATABASE).stat()
    assert (copied.st_mode & 0o777, copied.st_uid) == (0o600, owner)
    assert (box.state / "pending").read_text() == "2.0\n"
    assert box.systemctl_calls()[-3:] == ["stop appliance.service", "reset-failed appliance.service",
                                          "restart appliance.service"]
    assert f"saved the database ({DATABASE} {DATABASE}-wal) to {snapshot}" in result.stdout
    assert box.link("current") == "2.0"


def test_confirm_clears_the_snapshot_of_the_running_release_only(box: Box) -> None:
    assert box.run("upgrade", "--confirm").returncode == 0   # nothing pending (and no state directory)
    installed(box, "1.0")
    write_database(box, b"schema 5")
    installed(box, "2.0")
    (box.state / "pending").write_text("3.0\n")   # e.g. an upgrade that was not switched to
    result = box.run("upgrade", "--confirm")
    assert result.returncode == 0
    assert "the pending upgrade is to release 3.0, not to the running 2.0: left as it is" in result.stdout
    assert (box.state / "pending").exists() and (box.state / "snapshot" / DATABASE).exists()

    (box.state / "pending").write_text("2.0\n")
    result = box.run("upgrade", "--confirm")
    assert result.returncode == 0
    assert "release 2.0 serves: upgrade confirmed" in result.stdout
    assert not (box.state / "pending").exists() and not (box.state / "snapshot").exists()
    assert box.database().read_bytes() == b"schema 5"


def test_rollback_of_a_release_that_never_became_ready_restores_the_database_first(box: Box) -> None:
    installed(box, "1.0")
    write_database(box, b"schema 5: before the upgrade")
    before = box.database().stat()
    installed(box, "2.0")
    # the failing release migrated the database, then died before READY=1 (nothing confirmed it)
    write_database(box, b"schema 6: migrated by 2.0", wal=b"2.0's frames")
    box.database(DATABASE + "-shm").write_bytes(b"2.0's index")
    result = box.run("rollback")
    assert result.returncode == 0, result.stderr
    assert box.database().read_bytes() == b"schema 5: before the upgrade"
    restored = box.database().stat()
    assert (restored.st_mode & 0o777, restored.st_uid) == (0o600, before.st_uid)
    assert not box.database(DATABASE + "-wal").exists() and not box.database(DATABASE + "-shm").exists()
    assert [p.name for p in box.data.iterdir()] == [DATABASE]   # no temporary copies left
    restored_at = result.stdout.index("restored the database from before the upgrade to release 2.0")
    assert restored_at < result.stdout.index("switched to release 1.0")
    assert not (box.state / "pending").exists() and not (box.state / "snapshot").exists()
    assert (box.link("current"), box.link("previous")) == ("1.0", "2.0")


def test_rollback_of_a_release_that_had_served_keeps_the_database(box: Box) -> None:
    installed(box, "1.0")
    write_database(box, b"schema 5")
    installed(box, "2.0")
    assert box.run("upgrade", "--confirm").returncode == 0
    write_database(box, b"schema 6 and a message accepted by 2.0", wal=b"more accepted messages")
    result = box.run("rollback")
    assert result.returncode == 0, result.stderr
    assert box.database().read_bytes() == b"schema 6 and a message accepted by 2.0"
    assert box.database(DATABASE + "-wal").read_bytes() == b"more accepted messages"
    assert "release 2.0 had served (its upgrade was confirmed), so the database is kept as it is" in result.stdout
    assert "'has schema version N, but this appliance knows only up to M'" in result.stdout
    assert box.link("current") == "1.0"


def test_upgrade_is_refused_when_the_snapshot_would_not_fit(box: Box) -> None:
    installed(box, "1.0")
    calls = len(box.systemctl_calls())
    with box.database().open("wb") as database:
        database.truncate(24 * 1024 * 1024)          # sparse: takes no space in tmp_path
    result = box.run("upgrade", str(box.release("2.0")), state_tmpfs="32m")
    assert result.returncode == 1
    assert ("not enough free space in " + str(box.state) + " for the database snapshot: it needs 40 MiB"
            in result.stderr)
    assert "32 MiB are free; nothing was switched" in result.stderr
    assert box.link("current") == "1.0" and box.releases() == ["1.0"]
    assert len(box.systemctl_calls()) == calls       # the appliance was not stopped

    write_database(box, b"small")                    # the same tmpfs holds a small database's snapshot
    result = box.run("upgrade", str(box.release("3.0")), state_tmpfs="32m")
    assert result.returncode == 0, result.stderr
    assert f"saved the database ({DATABASE}) to {box.state}/snapshot" in result.stdout
