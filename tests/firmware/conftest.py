"""Artifacts the firmware tests use. scripts/test-firmware.sh builds them first (each build script
caches what it can), so a missing one here is a failure that names the command to run, not a skip."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "build" / "dist"
IMAGE = ROOT / "build" / "image" / "appliance-arm64.img"


def _artifact(path: Path, command: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: run {command} (scripts/test-firmware.sh does)")
    return path


@pytest.fixture(scope="session")
def onefile_x86_64() -> Path:
    """The x86_64 one-file binary."""
    return _artifact(DIST / "x86_64" / "appliance", "scripts/build-binary.sh --onefile")


@pytest.fixture(scope="session")
def onedir_x86_64() -> Path:
    """The x86_64 one-directory build: the directory holding the `appliance` executable."""
    return _artifact(DIST / "x86_64" / "appliance-onedir", "scripts/build-binary.sh --onedir")


@pytest.fixture(scope="session")
def onedir_aarch64() -> Path:
    """The arm64 one-directory build that goes into the image."""
    return _artifact(DIST / "aarch64" / "appliance-onedir", "scripts/build-binary.sh --arch arm64 --onedir")


@pytest.fixture(scope="session")
def image_arm64() -> Path:
    """The flashable arm64 disk image."""
    return _artifact(IMAGE, "firmware/build-image.sh")
