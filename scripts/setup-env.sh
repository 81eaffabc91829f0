#!/usr/bin/env bash
# Creates .venv with the appliance and what `extra` asks for (default: nothing extra).
# Sourced by run.sh and test.sh so both install what they need on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
extra="${1:-}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/pip" install -q --upgrade pip
fi
spec="$ROOT"
[ -n "$extra" ] && spec="$ROOT[$extra]"
"$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -e "$spec"
