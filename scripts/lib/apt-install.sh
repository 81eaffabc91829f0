# Sourced: install_debs PACKAGE... installs Debian packages with apt-get (sudo when not root),
# quietly; its output goes to stderr, so a caller's stdout (a command substitution) stays clean.
install_debs() {
  [ $# -gt 0 ] || return 0
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
