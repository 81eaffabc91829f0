#!/usr/bin/env bash
# make-release.sh ONEDIR OUT.tar [--release ID]: pack a onedir build (the directory holding the
# `appliance` executable, `_internal/` and the RELEASE file) as an upgrade for the image.
#
# The upgrade is a plain tar whose only top directory is the release id, which also becomes the
# directory name under /opt/appliance/releases/ on the box. Inside it, next to the build:
#   SHA256SUMS  the SHA-256 of every other regular file (sha256sum format, paths like ./appliance)
#   SYMLINKS    every symbolic link as "path -> target" (PyInstaller's onedir has some)
# firmware/rootfs/usr/lib/appliance/upgrade checks both against what it unpacked before it installs
# anything: they catch a truncated or corrupted copy (an SD card written from a PC), not a forgery.
# --release ID packs the same build under another id (tests use it to upgrade to "a new release").
set -euo pipefail

usage() { echo "usage: $0 ONEDIR OUT.tar [--release ID]" >&2; exit 2; }
[ $# -eq 2 ] || [ $# -eq 4 ] || usage
ONEDIR=$1 OUT=$2 RELEASE_ID=
if [ $# -eq 4 ]; then
  [ "$3" = --release ] || usage
  RELEASE_ID=$4
fi
[ -x "$ONEDIR/appliance" ] || { echo "$0: $ONEDIR/appliance is not an executable: not a onedir build" >&2; exit 2; }
if [ -z "$RELEASE_ID" ]; then
  [ -f "$ONEDIR/RELEASE" ] || { echo "$0: $ONEDIR has no RELEASE file; give --release ID" >&2; exit 2; }
  RELEASE_ID=$(head -n 1 "$ONEDIR/RELEASE")
fi
# the id names a directory on the box: no slashes, no leading dot, nothing a shell would mangle
if ! [[ "$RELEASE_ID" =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]]; then
  echo "$0: release id '$RELEASE_ID' must be letters, digits and . _ + - (not starting with . _ + -)" >&2
  exit 2
fi

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/make-release.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
TOP="$STAGE/$RELEASE_ID"
cp -a "$ONEDIR" "$TOP"
printf '%s\n' "$RELEASE_ID" > "$TOP/RELEASE"
rm -f "$TOP/SHA256SUMS" "$TOP/SYMLINKS"
(
  cd "$TOP"
  find . -type l -printf '%p -> %l\n' | LC_ALL=C sort > SYMLINKS
  find . -type f ! -path ./SHA256SUMS -print0 | LC_ALL=C sort -z | xargs -0 sha256sum > "$STAGE/sums"
  mv "$STAGE/sums" SHA256SUMS
)
# root-owned and not writable by others on the box, whoever builds it
chmod -R go-w "$TOP"
# --hard-dereference: hard links become plain files (upgrade accepts only files, directories, symlinks)
tar -C "$STAGE" --owner=0 --group=0 --numeric-owner --sort=name --hard-dereference -cf "$OUT.part" "$RELEASE_ID"
mv "$OUT.part" "$OUT"
echo "$0: $OUT: release $RELEASE_ID, $(wc -l < "$TOP/SHA256SUMS") files, $(du -h "$OUT" | cut -f1)" >&2
