#!/usr/bin/env bash
# The slow tests: build the one-file and one-directory binaries (x86_64 and arm64) and the arm64
# disk image, then boot the image in qemu and check it from the host (tests/firmware/). Tens of
# minutes on a cold cache (build/cache keeps the Debian trees), a few once cached. Root is needed
# (debootstrap, user namespaces for the arm64 tree, network namespaces for the mDNS test).
# Extra arguments go to pytest, e.g. scripts/test-firmware.sh -k boot
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

# shellcheck source=lib/apt-install.sh
. "$ROOT/scripts/lib/apt-install.sh"
need_debs=()
command -v qemu-system-aarch64 >/dev/null || need_debs+=(qemu-system-arm ipxe-qemu)
[ -x /usr/bin/qemu-aarch64-static ] || need_debs+=(qemu-user-static)
command -v debootstrap >/dev/null || need_debs+=(debootstrap)
command -v mcopy >/dev/null || need_debs+=(mtools)
command -v mkfs.vfat >/dev/null || need_debs+=(dosfstools)
command -v sfdisk >/dev/null || need_debs+=(fdisk)
command -v mkfs.ext4 >/dev/null || need_debs+=(e2fsprogs)
command -v dnsmasq >/dev/null || need_debs+=(dnsmasq-base)       # DHCP for the image on its test link
command -v ip >/dev/null || need_debs+=(iproute2)
# scripts/build-binary.sh freezes Debian's python3 (a stripped libpython, the same as on arm64)
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need_debs+=(python3 python3-venv)
ldconfig -p | grep 'libpython3\.11\.so\.1\.0' >/dev/null || need_debs+=(libpython3.11)
install_debs "${need_debs[@]}"

"$ROOT/scripts/setup-env.sh" test
"$ROOT/scripts/build-binary.sh"                          # x86_64 onefile and onedir
"$ROOT/scripts/build-binary.sh" --arch arm64 --onedir     # what the image carries
"$ROOT/firmware/build-image.sh"
APPLIANCE_FIRMWARE_TESTS=1 exec "$ROOT/.venv/bin/pytest" -p no:cacheprovider tests/firmware "$@"
