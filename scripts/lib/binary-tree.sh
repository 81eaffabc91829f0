#!/usr/bin/env bash
# binary-tree.sh ARCH DIR [PACKAGE,...]  A Debian bookworm tree for ARCH (amd64|arm64) in DIR, made
# by scripts/lib/debootstrap.sh the first time and unpacked from a tarball in build/cache after that.
# The cache key is a hash of the architecture, the package list and debootstrap.sh itself, so a new
# package or a changed bootstrap makes a new tree (old tarballs stay until build/cache is cleaned).
# A DIR already unpacked from the current tarball is kept as it is (with what was added to it since,
# e.g. the arm64 build's venv); DIR/.binary-tree-key records which tarball it came from.
# Prints the tarball's path. Root only (debootstrap, and the tree keeps root ownership).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 amd64|arm64 DIR [PACKAGE,...]" >&2; exit 2; }
ARCH=$1; DIR=$2; PKGS=${3:-}
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="$(cd "$HERE/../.." && pwd)/build/cache"
mkdir -p "$CACHE"
key=$( { echo "$ARCH $PKGS"; cat "$HERE/debootstrap.sh"; } | sha256sum | cut -c1-16)
tarball="$CACHE/debian-$ARCH-$key.tar"
if [ "$(cat "$DIR/.binary-tree-key" 2>/dev/null)" = "$key" ]; then
  :
elif [ -s "$tarball" ]; then
  rm -rf "$DIR"; mkdir -p "$DIR"
  tar -C "$DIR" -xpf "$tarball"
else
  echo "binary-tree: building the $ARCH tree ($PKGS); cached as $tarball" >&2
  "$HERE/debootstrap.sh" "$ARCH" "$DIR" "$PKGS" >&2
  rm -rf "$DIR/var/cache/apt/archives/"*.deb
  tar -C "$DIR" --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi
echo "$key" > "$DIR/.binary-tree-key"
echo "$tarball"
