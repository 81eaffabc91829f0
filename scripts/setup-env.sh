#!/usr/bin/env bash
# Creates .venv with the appliance and what `extra` asks for (default: nothing extra).
# Sourced by run.sh and test.sh so both install what they need on a fresh machine.
# The interpreter: $PYTHON if set; else the distribution's /usr/bin/python3 when it is 3.11 or newer
# and can make a virtualenv (the one scripts/build-binary.sh builds the shipped binary with, and an
# optimised build: Debian's is built with PGO and LTO, while a python3 built from source without
# --enable-optimizations, such as pyenv's default, ran our pure-Python code 1.6 x slower here; see
# docs/performance.md); else the first python3 on PATH that can; else, when neither can and apt-get
# is there (a fresh Debian), /usr/bin/python3 after installing python3-venv. An existing .venv is
# kept: remove it to switch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extra="${1:-}"
# shellcheck source=lib/apt-install.sh
. "$ROOT/scripts/lib/apt-install.sh"

is_311_or_newer() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

can_make_venv() {  # Debian ships venv and ensurepip apart from python3 (package python3-venv)
  is_311_or_newer "$1" && "$1" -c 'import ensurepip, venv' 2>/dev/null
}

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  local system=/usr/bin/python3
  if [ -x "$system" ] && can_make_venv "$system"; then echo "$system"; return; fi
  if command -v python3 >/dev/null && can_make_venv python3; then echo python3; return; fi
  # A fresh Debian or Raspberry Pi OS: python3 is there, its venv module is not.
  if [ -x "$system" ] && is_311_or_newer "$system" && command -v apt-get >/dev/null; then
    echo "setup-env: installing python3-venv (Debian keeps venv out of python3)" >&2
    install_debs python3-venv
    echo "$system"; return
  fi
  echo python3  # whatever it is: its own error says what is missing
}

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  PY="$(pick_python)"
  echo "setup-env: creating .venv with $PY ($("$PY" --version 2>&1))" >&2
  "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/pip" install -q --upgrade pip
fi
spec="$ROOT"
[ -n "$extra" ] && spec="$ROOT[$extra]"
"$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -e "$spec"
