#!/usr/bin/env bash
# Install everything the tests need (Python packages, Debian packages, npm packages) and run them.
# Extra arguments go to pytest, e.g. scripts/test.sh -k roster -x
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

need_debs=()
command -v go-sendxmpp >/dev/null || need_debs+=(go-sendxmpp)
command -v ip >/dev/null || need_debs+=(iproute2)   # tests/netem.py: network namespaces (root only)
if [ ${#need_debs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
fi

"$ROOT/scripts/setup-env.sh" test
if [ -f tests/js/package.json ]; then
  (cd tests/js && npm ci --silent --no-audit --no-fund)
fi
exec "$ROOT/.venv/bin/pytest" "$@"
