#!/usr/bin/env bash
# debootstrap.sh ARCH DIR [PACKAGE,...]  A minimal Debian bookworm tree (variant minbase) for ARCH
# (amd64 or arm64) in DIR, with the extra packages given (comma-separated), from
# ${DEBIAN_MIRROR:-http://deb.debian.org/debian}, components main and non-free-firmware.
# A foreign architecture is made in two stages: unpack on the host, then configure inside the tree
# under qemu-user (scripts/lib/foreign-chroot.sh). Root only. Callers cache the result themselves.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 amd64|arm64 DIR [PACKAGE,...]" >&2; exit 2; }
ARCH=$1; DIR=$2; INCLUDE=${3:-}
HERE="$(cd "$(dirname "$0")" && pwd)"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
command -v debootstrap >/dev/null || { echo "$0: apt-get install debootstrap" >&2; exit 2; }
host_arch=$(dpkg --print-architecture)
opts=(--arch="$ARCH" --variant=minbase --components=main,non-free-firmware)
[ -n "$INCLUDE" ] && opts+=(--include="$INCLUDE")
rm -rf "$DIR"; mkdir -p "$DIR"
if [ "$ARCH" = "$host_arch" ]; then
  debootstrap "${opts[@]}" bookworm "$DIR" "$MIRROR"
else
  debootstrap "${opts[@]}" --foreign bookworm "$DIR" "$MIRROR"
  "$HERE/foreign-chroot.sh" "$DIR" /debootstrap/debootstrap --second-stage
fi
# apt inside the tree uses the same mirror, with the updates suite
printf 'deb %s bookworm main non-free-firmware\ndeb %s bookworm-updates main non-free-firmware\n' \
  "$MIRROR" "$MIRROR" > "$DIR/etc/apt/sources.list"
