#!/usr/bin/env bash
# build-image.sh [--onedir DIR] [--out IMG]: the flashable arm64 disk image (Raspberry Pi 3/4/Zero 2 W,
# and qemu's virt machine): a FAT boot partition (label BOOT: kernel, initrd, Pi firmware, DTBs,
# config.txt, cmdline.txt) and an ext4 root (label rootfs: Debian bookworm with systemd, networkd,
# wpa_supplicant and the appliance's onedir build). No loop devices, no mounts: the partitions are
# made as plain files (mkfs.vfat -C + mcopy, mkfs.ext4 -d) and written into the disk at their offsets.
# Root only (the staged tree keeps root and appliance ownership). Defaults:
#   --onedir build/dist/aarch64/appliance-onedir   (scripts/build-binary.sh --arch arm64 --onedir)
#   --out    build/image/appliance-arm64.img
# The Debian tree is cached in build/cache (firmware/lib/make-tree.sh): a cold build takes several
# minutes, a warm one seconds (13 s here). Sizes and step times go to build/image/build-report.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ONEDIR="$ROOT/build/dist/aarch64/appliance-onedir"
OUT="$ROOT/build/image/appliance-arm64.img"
usage() { echo "usage: $0 [--onedir DIR] [--out IMG]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --onedir) [ $# -ge 2 ] || usage; ONEDIR=$(realpath "$2"); shift 2 ;;
    --out) [ $# -ge 2 ] || usage; OUT=$(realpath -m "$2"); shift 2 ;;
    *) usage ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "$0: must run as root (the image's files are owned by root)" >&2; exit 2; }
[ -x "$ONEDIR/appliance" ] && [ -r "$ONEDIR/RELEASE" ] || {
  echo "$0: $ONEDIR is no onedir build (appliance + RELEASE): run scripts/build-binary.sh --arch arm64 --onedir" >&2
  exit 2; }
for tool in mkfs.vfat mcopy mkfs.ext4 sfdisk; do
  command -v "$tool" >/dev/null || { echo "$0: $tool missing (apt-get install dosfstools mtools e2fsprogs fdisk)" >&2; exit 2; }
done
RELEASE=$(head -1 "$ONEDIR/RELEASE")
BOOT_MB=256
DTBS="bcm2837-rpi-3-b bcm2837-rpi-3-b-plus bcm2837-rpi-zero-2-w bcm2711-rpi-4-b bcm2712-rpi-5-b"
WORK="$(dirname "$OUT")/work"
STAGE="$WORK/root"
REPORT="$(dirname "$OUT")/build-report.txt"
rm -rf "$WORK"; mkdir -p "$WORK"
steps=()
step_start=$SECONDS
step_done() { steps+=("$(printf '%-28s %4d s' "$1" $((SECONDS - step_start)))"); step_start=$SECONDS; }

# 1. the Debian tree (cached)
cached=$(ls "$ROOT"/build/cache/image-tree-arm64-*.tar 2>/dev/null || true)
TAR=$("$ROOT/firmware/lib/make-tree.sh")
case "$cached" in *"$TAR"*) CACHE=hit ;; *) CACHE=miss ;; esac
step_done "debian tree (cache $CACHE)"

# 2. the staged root: tree + firmware/rootfs overlay + the appliance release
mkdir -p "$STAGE"
tar -C "$STAGE" --numeric-owner -xpf "$TAR"
tar -C "$ROOT/firmware/rootfs" --owner=0 --group=0 --mode=go-w -cf - . | tar -C "$STAGE" --no-overwrite-dir -xpf -
enable_unit() {  # WANTED_BY UNIT: what `systemctl enable` does, as a symlink
  mkdir -p "$STAGE/etc/systemd/system/$1.wants"
  ln -sfn "/usr/lib/systemd/system/$2" "$STAGE/etc/systemd/system/$1.wants/$2"
}
for unit in "$STAGE"/usr/lib/systemd/system/appliance*.service; do
  for target in $(sed -n 's/^WantedBy=//p' "$unit"); do enable_unit "$target" "${unit##*/}"; done
done
enable_unit multi-user.target systemd-networkd.service
enable_unit sockets.target systemd-networkd.socket
enable_unit network-online.target systemd-networkd-wait-online.service
release_dir="$STAGE/opt/appliance/releases/$RELEASE"
mkdir -p "$release_dir"
cp -a "$ONEDIR/." "$release_dir/"
chown -R 0:0 "$STAGE/opt/appliance"; chmod -R go-w "$STAGE/opt/appliance"
ln -sfn "releases/$RELEASE" "$STAGE/opt/appliance/current"
app_ids=$(awk -F: '$1 == "appliance" { print $3 ":" $4 }' "$STAGE/etc/passwd")
[ -n "$app_ids" ] || { echo "$0: the tree has no appliance user" >&2; exit 1; }
install -d -m 0750 -o "${app_ids%:*}" -g "${app_ids#*:}" "$STAGE/var/lib/appliance"
# The FAT partition is mounted on /boot/firmware: what raspi-firmware put there (its GPU firmware
# files, and its hooks' copies of the kernel, initrd, DTBs) goes onto that partition instead.
FIRMWARE="$WORK/raspi-firmware"
mv "$STAGE/boot/firmware" "$FIRMWARE"; install -d -m 0700 "$STAGE/boot/firmware"
step_done "stage root + overlay"

# 3. the boot partition: kernel, initrd, DTBs, Pi GPU firmware, config.txt, cmdline.txt
KERNEL=$(ls "$STAGE"/boot/vmlinuz-* | sort -V | tail -1); KVER=${KERNEL##*/vmlinuz-}
BOOTDIR="$WORK/boot"; mkdir -p "$BOOTDIR"
cp "$KERNEL" "$BOOTDIR/vmlinuz"; cp "$STAGE/boot/initrd.img-$KVER" "$BOOTDIR/initrd.img"
cp "$ROOT/firmware/boot/config.txt" "$ROOT/firmware/boot/cmdline.txt" "$BOOTDIR/"
missing_dtbs=""
for dtb in $DTBS; do
  src="$STAGE/usr/lib/linux-image-$KVER/broadcom/$dtb.dtb"
  if [ -e "$src" ]; then cp "$src" "$BOOTDIR/"; else missing_dtbs+=" $dtb"; fi
done
cp "$FIRMWARE"/{bootcode.bin,start*.elf,fixup*.dat} "$BOOTDIR/"
mkfs.vfat -C -F 32 -n BOOT "$WORK/boot.part" $((BOOT_MB * 1024)) >/dev/null
mcopy -s -i "$WORK/boot.part" "$BOOTDIR"/* ::/
step_done "boot partition (FAT)"

# 4. the root partition: the staged tree, with room to spare (first boot grows it to the card)
ROOT_MB=$(( $(du -sm "$STAGE" | cut -f1) * 12 / 10 + 128 ))
mkfs.ext4 -q -L rootfs -d "$STAGE" "$WORK/root.part" "${ROOT_MB}M"
step_done "root partition (ext4)"

# 5. the disk: MBR with the two partitions, each written at its offset (sparse)
S1=2048; N1=$((BOOT_MB * 2048)); S2=$((S1 + N1)); N2=$((ROOT_MB * 2048))
mkdir -p "$(dirname "$OUT")"; rm -f "$OUT"
truncate -s $(( (S2 + N2) * 512 )) "$OUT"
printf 'label: dos\nstart=%d, size=%d, type=c, bootable\nstart=%d, size=%d, type=83\n' \
  $S1 $N1 $S2 $N2 | sfdisk -q "$OUT"
dd if="$WORK/boot.part" of="$OUT" bs=1M seek=$((S1 / 2048)) conv=notrunc,sparse status=none
dd if="$WORK/root.part" of="$OUT" bs=1M seek=$((S2 / 2048)) conv=notrunc,sparse status=none
rm -rf "$WORK"
step_done "disk image"

{
  echo "image: $OUT"
  echo "release: $RELEASE"
  echo "kernel: $KVER"
  echo "size: $(du -h --apparent-size "$OUT" | cut -f1) apparent, $(du -h "$OUT" | cut -f1) allocated" \
       "(boot ${BOOT_MB} MiB, root ${ROOT_MB} MiB)"
  echo "device trees not in this kernel:${missing_dtbs:- none}"
  echo "debian tree cache: $CACHE ($TAR)"
  printf '%s\n' "${steps[@]}"
  echo "total: $(( SECONDS )) s"
} | tee "$REPORT"
