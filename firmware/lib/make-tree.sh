#!/usr/bin/env bash
# make-tree.sh: print the path of a tarball holding the image's Debian arm64 root tree (debootstrap +
# kernel + Pi firmware + the appliance user: firmware/lib/tree-inside.sh), building it if it is not
# in build/cache yet. The cache key is a hash of the package list and of the files that decide what
# is in the tree (debootstrap.sh, tree-inside.sh and this script), so editing any of
# them builds a new tree; foreign-chroot.sh only runs commands and is left out. A cold build takes
# several minutes (everything runs under qemu-user); a hit costs nothing. Progress goes to stderr;
# stdout is the tarball's path.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PACKAGES=systemd-sysv,udev,kmod,iproute2,wpasupplicant,ca-certificates
CACHE="$ROOT/build/cache"
key=$( { echo "$PACKAGES"; cat "$ROOT/scripts/lib/debootstrap.sh" "$ROOT/firmware/lib/tree-inside.sh" "$0"; } \
  | sha256sum | cut -c1-16)
TAR="$CACHE/image-tree-arm64-$key.tar"
if [ -e "$TAR" ]; then
  echo "image tree: cache hit ($TAR)" >&2
  echo "$TAR"; exit 0
fi
echo "image tree: cache miss, building $TAR (several minutes under qemu-user)" >&2
mkdir -p "$CACHE"
WORK="$CACHE/image-tree-arm64.work"
"$ROOT/scripts/lib/debootstrap.sh" arm64 "$WORK" "$PACKAGES" >&2
cp "$ROOT/firmware/lib/tree-inside.sh" "$WORK/tmp/tree-inside.sh"
"$ROOT/scripts/lib/foreign-chroot.sh" "$WORK" /bin/sh /tmp/tree-inside.sh >&2
rm -f "$WORK/tmp/tree-inside.sh" "$WORK/etc/resolv.conf"
tar -C "$WORK" --numeric-owner --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' \
  -cf "$TAR.part" .
mv "$TAR.part" "$TAR"
rm -rf "$WORK"
echo "$TAR"
