from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import ServerProcess

# tests/firmware/ builds binaries and boots the arm64 image (tens of minutes, qemu): it has its own
# command, scripts/test-firmware.sh, which builds what it needs and sets this variable.
collect_ignore = [] if os.environ.get("APPLIANCE_FIRMWARE_TESTS") else ["firmware"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files marked `long_running` (minutes on a slow link) first: with pytest-xdist's
    `--dist loadfile` (scripts/test.sh) a file that starts last finishes last, and the suite's time
    is that of its busiest worker. The sort is stable, so everything else keeps its order."""
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One appliance per test module (registration enabled), stopped by its PID at the end."""
    # Tests sign up many accounts from 127.0.0.1: lift the per-address sign-up limit here;
    # tests/test_register.py checks that limit on a server of its own.
    proc = ServerProcess(tmp_path_factory.mktemp("appliance"),
                         settings={"allow_registration": True, "limits.registrations_per_address": 1000})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that kill, restart or reconfigure it."""
    proc = ServerProcess(tmp_path / "appliance")
    yield proc
    if proc.proc is not None:
        proc.stop()
