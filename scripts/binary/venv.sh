#!/usr/bin/env bash
# venv.sh PYTHON VENV SRC  The build virtual environment: only the appliance's runtime
# dependencies and PyInstaller (pyproject's `build` extra), installed from the source copy SRC
# (a wheel built from it, never editable), then the appliance itself uninstalled so the binary is
# made from the fresh source copy given to PyInstaller. Rebuilt only when SRC/pyproject.toml or
# this script changed (a hash stamp in VENV). Runs on the host and inside the arm64 tree; extra
# pip options come from PIP_* variables (the arm64 build sets PIP_ONLY_BINARY=:all:).
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 PYTHON VENV SRC" >&2; exit 2; }
PYTHON=$1; VENV=$2; SRC=$3
stamp=$(cat "$SRC/pyproject.toml" "$0" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.build-stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "venv: $VENV is current" >&2
  exit 0
fi
echo "venv: creating $VENV" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/pip" install -q --disable-pip-version-check "$SRC[build]"
"$VENV/bin/pip" uninstall -q -y appliance
echo "$stamp" > "$VENV/.build-stamp"
