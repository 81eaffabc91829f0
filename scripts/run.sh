#!/usr/bin/env bash
# Install (into .venv) and run the appliance with embedded defaults:
# data in ./data, SQLite, a self-signed certificate, c2s on 5222 (STARTTLS) and 5223 (direct TLS).
# Extra arguments go to `appliance serve`, e.g. scripts/run.sh --domain chat.example --data /var/lib/appliance
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/scripts/setup-env.sh"
exec "$ROOT/.venv/bin/appliance" serve "$@"
