#!/usr/bin/env bash
# Install everything the tests need (Python packages, Debian packages, npm packages) and run them.
# Extra arguments go to pytest, e.g. scripts/test.sh -k roster -x
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

# shellcheck source=lib/apt-install.sh
. "$ROOT/scripts/lib/apt-install.sh"
need_debs=()
command -v go-sendxmpp >/dev/null || need_debs+=(go-sendxmpp)
command -v ip >/dev/null || need_debs+=(iproute2)   # tests/netem.py: network namespaces (root only)
command -v zbarimg >/dev/null || need_debs+=(zbar-tools)        # QR codes decoded back to the invite URI
command -v tmux >/dev/null || need_debs+=(tmux)                  # tests/test_chat_tmux.py drives `appliance chat` in it
command -v chromium >/dev/null || need_debs+=(chromium)         # the invite page rendered headless
command -v chromedriver >/dev/null || need_debs+=(chromium-driver)  # Selenium drives the admin page (never downloads a driver)
command -v avahi-browse >/dev/null || need_debs+=(avahi-utils avahi-daemon dbus)  # a second mDNS browser
install_debs "${need_debs[@]}"

"$ROOT/scripts/setup-env.sh" test
if [ -f tests/js/package.json ]; then
  (cd tests/js && npm ci --silent --no-audit --no-fund)
fi
# Three workers, one test file each at a time (module-scoped servers stay per file). Most tests wait
# on sockets, timers or a slow link (the two bad-link files for minutes), not on the CPU. Files go
# out in collection order (no reordering by size), which tests/conftest.py starts with the longest.
# TEST_WORKERS=0 runs everything in this one process.
workers="${TEST_WORKERS:-3}"
if [ "$workers" = 0 ]; then
  exec "$ROOT/.venv/bin/pytest" "$@"
fi
exec "$ROOT/.venv/bin/pytest" -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
