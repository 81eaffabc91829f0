#!/usr/bin/env bash
# pyinstaller.sh VENV SRC WORK OUT onefile|onedir...  Freeze SRC's appliance package with VENV's
# PyInstaller: `onefile` makes OUT/appliance, `onedir` OUT/appliance-onedir/ (the `appliance`
# executable and _internal/) with SRC/RELEASE copied in. No --hidden-import: the package imports its
# commands and features statically. Fails if a test or development package got into the analysis.
# setuptools (with pkg_resources and distutils) is left out: only cffi's build-time API imports it,
# and PyInstaller's pkg_resources runtime hook would import it at every start (about 10 MB of RSS).
# Runs on the host and inside the arm64 tree.
set -euo pipefail
[ $# -ge 5 ] || { echo "usage: $0 VENV SRC WORK OUT onefile|onedir..." >&2; exit 2; }
VENV=$1; SRC=$2; WORK=$3; OUT=$4; shift 4
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$WORK" "$OUT"
for mode in "$@"; do
  rm -rf "$WORK/$mode"
  "$VENV/bin/pyinstaller" --noconfirm --log-level WARN --clean "--$mode" --name appliance \
    --exclude-module setuptools --exclude-module pkg_resources --exclude-module distutils \
    --paths "$SRC" --workpath "$WORK/$mode/build" --specpath "$WORK/$mode" --distpath "$WORK/$mode/dist" \
    "$HERE/launcher.py"
  # the analysis lists every module frozen in; none of these may be among them
  toc="$WORK/$mode/build/appliance/Analysis-00.toc"
  if grep -oE "'(IPython|pytest|_pytest|slixmpp|selenium|pytest_trio|xdist)[.']" "$toc" | sort -u | grep .; then
    echo "$0: test or development packages were frozen into the $mode build (above)" >&2
    exit 1
  fi
  grep -q "'appliance.features.pep'" "$toc" || { echo "$0: the appliance package was not frozen" >&2; exit 1; }
  if [ "$mode" = onefile ]; then
    mv -f "$WORK/$mode/dist/appliance" "$OUT/appliance"
  else
    cp "$SRC/RELEASE" "$WORK/$mode/dist/appliance/RELEASE"
    rm -rf "$OUT/appliance-onedir"
    mv "$WORK/$mode/dist/appliance" "$OUT/appliance-onedir"
  fi
done
