#!/usr/bin/env bash
# build-binary.sh [--arch host|arm64] [--onefile] [--onedir]  The appliance as PyInstaller binaries:
# build/dist/<arch>/appliance (one file, the download) and build/dist/<arch>/appliance-onedir/ (one
# directory with a RELEASE file, what the image carries); neither flag: both. Made from a clean
# virtual environment with only the runtime dependencies (scripts/binary/venv.sh) and a copy of the
# source, never from the development .venv. arm64 is built on this machine inside a Debian arm64 tree
# under qemu-user (cached in build/cache; about 10 min cold, a few minutes warm). Writes and prints
# build/dist/<arch>/build-report.txt (build time, sizes; start-up time and idle RSS). See docs/binary.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ARCH=host; MODES=()
while [ $# -gt 0 ]; do
  case $1 in
    --arch) ARCH=${2:-}; shift 2 ;;
    --arch=*) ARCH=${1#--arch=}; shift ;;
    --onefile) MODES+=(onefile); shift ;;
    --onedir) MODES+=(onedir); shift ;;
    *) echo "usage: $0 [--arch host|arm64] [--onefile] [--onedir]" >&2; exit 2 ;;
  esac
done
[ ${#MODES[@]} -gt 0 ] || MODES=(onedir onefile)   # the image's onedir first
case $ARCH in
  host) MACHINE=$(uname -m) ;;
  arm64|aarch64) MACHINE=aarch64 ;;
  *) echo "$0: --arch must be host or arm64, not '$ARCH'" >&2; exit 2 ;;
esac
[ "$MACHINE" = "$(uname -m)" ] && ARCH=host
OUT="$ROOT/build/dist/$MACHINE"
WORK="$ROOT/build/binary"
ARM64_TREE="$WORK/tree-aarch64"
ARM64_DEBS=python3,python3-venv,python3-pip,libpython3.11,binutils,ca-certificates
started=$(date +%s)

release_id() {
  local version sha
  version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/appliance/__init__.py")
  sha=$(git -C "$ROOT" rev-parse --short HEAD)
  echo "$version-$(date -u +%Y%m%d%H%M%S)-$sha"
}

# A copy of the working tree's source (uncommitted and untracked files in appliance/ included), with
# the release id as RELEASE and as appliance/_release.py, which `appliance --version` prints.
copy_source() {
  local dest=$1 release=$2
  rm -rf "$dest"; mkdir -p "$dest"
  tar -C "$ROOT" --exclude=__pycache__ -cf - appliance pyproject.toml README.md | tar -C "$dest" -xf -
  echo "$release" > "$dest/RELEASE"
  printf '"""Written by scripts/build-binary.sh into its source copy; never committed."""\n\nRELEASE = "%s"\n' \
    "$release" > "$dest/appliance/_release.py"
}

build_host() {
  local src="$WORK/src-$MACHINE" python=/usr/bin/python3
  [ -x "$python" ] || { echo "$0: $python missing: apt-get install python3 python3-venv libpython3.11" >&2; exit 2; }
  copy_source "$src" "$RELEASE_ID"
  "$ROOT/scripts/binary/venv.sh" "$python" "$ROOT/build/venv-binary-$MACHINE" "$src"
  "$ROOT/scripts/binary/pyinstaller.sh" "$ROOT/build/venv-binary-$MACHINE" "$src" "$WORK/work-$MACHINE" "$OUT" \
    "${MODES[@]}"
}

# Inside the arm64 tree: /build/src (the source copy), /build/scripts (scripts/binary), /build/venv
# (kept between builds), /build/out (the results, copied out).
build_arm64() {
  "$ROOT/scripts/lib/binary-tree.sh" arm64 "$ARM64_TREE" "$ARM64_DEBS" >/dev/null
  copy_source "$ARM64_TREE/build/src" "$RELEASE_ID"
  rm -rf "$ARM64_TREE/build/scripts" "$ARM64_TREE/build/out"
  cp -r "$ROOT/scripts/binary" "$ARM64_TREE/build/scripts"
  "$ROOT/scripts/lib/foreign-chroot.sh" "$ARM64_TREE" env PIP_ONLY_BINARY=:all: \
    /build/scripts/venv.sh /usr/bin/python3 /build/venv /build/src
  "$ROOT/scripts/lib/foreign-chroot.sh" "$ARM64_TREE" \
    /build/scripts/pyinstaller.sh /build/venv /build/src /build/work /build/out "${MODES[@]}"
  mkdir -p "$OUT"
  for mode in "${MODES[@]}"; do
    if [ "$mode" = onefile ]; then
      cp "$ARM64_TREE/build/out/appliance" "$OUT/appliance"
    else
      rm -rf "$OUT/appliance-onedir"
      cp -a "$ARM64_TREE/build/out/appliance-onedir" "$OUT/appliance-onedir"
    fi
  done
}

report() {
  local seconds=$1
  echo "appliance binary build report, $(date -u '+%Y-%m-%d %H:%M UTC'), built on $(uname -m) ($(nproc) cores)"
  echo "target: $MACHINE; built: ${MODES[*]}; build time: ${seconds} s"
  echo "release: $RELEASE_ID"
  for mode in "${MODES[@]}"; do
    if [ "$mode" = onefile ]; then
      echo "onefile size: $(du -m --apparent-size "$OUT/appliance" | cut -f1) MB ($(stat -c %s "$OUT/appliance") bytes)"
    else
      echo "onedir total: $(du -sm --apparent-size "$OUT/appliance-onedir" | cut -f1) MB"
    fi
  done
  if [ "$ARCH" = host ]; then
    for mode in "${MODES[@]}"; do
      local binary="$OUT/appliance"; [ "$mode" = onedir ] && binary="$OUT/appliance-onedir/appliance"
      echo "$mode: $("$ROOT/scripts/binary/measure.py" --runs 3 "$binary" | paste -sd ';' | sed 's/;/; /')"
    done
  else
    # the onedir in the tree, run under qemu-user; the arm64 onefile has no separate start-up figure
    if [[ " ${MODES[*]} " = *" onedir "* ]]; then
      echo "onedir under qemu-user (EMULATED on $(uname -m), not a Pi figure):" \
        "$("$ROOT/scripts/binary/measure.py" --runs 3 --chroot "$ARM64_TREE" /build/out/appliance-onedir/appliance)"
    fi
  fi
}

RELEASE_ID=$(release_id)
if [ "$ARCH" = host ]; then build_host; else build_arm64; fi
report $(( $(date +%s) - started )) | tee "$OUT/build-report.txt"
