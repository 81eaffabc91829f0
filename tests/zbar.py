"""Reading QR codes back with zbarimg (Debian zbar-tools), as a phone would: from a PNG, and from
the half-block text a terminal shows (turned back into pixels, docs/pairing.md)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_zbarimg = pytest.mark.skipif(
    shutil.which("zbarimg") is None,
    reason="zbarimg is missing: install Debian's zbar-tools (scripts/test.sh does)")

# A terminal shows dark modules as background and light ones as the character's foreground; each
# character is two modules high: (top, bottom), True = light.
_HALVES = {"█": (True, True), "▀": (True, False), "▄": (False, True), " ": (False, False)}
_PIXELS_PER_MODULE = 4


def decode(image: Path) -> str:
    """The text of the one QR code in `image` (-Sbinary: the bytes as they are, no charset guess)."""
    result = subprocess.run(["zbarimg", "--raw", "-q", "-Sbinary", str(image)],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, f"zbarimg found no QR code in {image}: {result.stderr!r}"
    return result.stdout.decode("utf-8")


def terminal_block(text: str) -> list[str]:
    """The first run of lines made only of half-block characters: the QR code in a printout."""
    block: list[str] = []
    for line in text.splitlines():
        if line and set(line) <= set(_HALVES):
            block.append(line)
        elif block:
            break
    assert block, "no terminal QR code in the text"
    return block


def terminal_to_pgm(block: list[str], path: Path) -> Path:
    """Write the terminal rendering as a greyscale PGM, each module a square of pixels."""
    rows: list[bytes] = []
    width = max(len(line) for line in block)
    for line in block:
        halves = [_HALVES[char] for char in line.ljust(width)]
        for half in (0, 1):
            row = b"".join((b"\xff" if pair[half] else b"\x00") * _PIXELS_PER_MODULE for pair in halves)
            rows += [row] * _PIXELS_PER_MODULE
    header = f"P5 {width * _PIXELS_PER_MODULE} {len(rows)} 255\n".encode()
    path.write_bytes(header + b"".join(rows))
    return path


def decode_terminal(text: str, workdir: Path) -> str:
    return decode(terminal_to_pgm(terminal_block(text), workdir / "terminal-qr.pgm"))
