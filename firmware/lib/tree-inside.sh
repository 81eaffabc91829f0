#!/bin/sh
# tree-inside.sh: runs INSIDE the arm64 image tree (scripts/lib/foreign-chroot.sh) after debootstrap.
# Adds the kernel, Pi firmware and Wi-Fi firmware, and the appliance's system user. Everything
# here is emulated (qemu-user), so it avoids whatever forks a lot: the initramfs lists its modules
# (MODULES=list) instead of the default MODULES=most, which takes about 30 minutes here.
set -eu
export DEBIAN_FRONTEND=noninteractive

# Documentation, manual pages and translations are not read on an appliance: keep them off the SD card.
cat > /etc/dpkg/dpkg.cfg.d/appliance-excludes <<'X'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
X

# The initramfs only needs to find the root file system: on qemu virt (virtio) and on a Pi's SD card
# (bcm2835 sdhost on Pi 3 / Zero 2 W, sdhci-iproc emmc2 on Pi 4). Written before the kernel so the
# first mkinitramfs already uses it; the dependencies of each module come along.
mkdir -p /etc/initramfs-tools/conf.d
cat > /etc/initramfs-tools/modules <<'X'
virtio_pci
virtio_mmio
virtio_blk
virtio_net
ext4
vfat
nls_cp437
nls_ascii
mmc_block
sdhci_iproc
sdhci_pltfm
bcm2835
X
# FSTYPE: the root file system cannot be probed in a chroot; without it the initramfs has no fsck
printf 'MODULES=list\nFSTYPE=ext4\n' > /etc/initramfs-tools/conf.d/appliance.conf

# raspi-firmware's kernel hook copies the kernel, initrd and DTBs to /boot/firmware and rewrites
# config.txt/cmdline.txt from /etc/default/raspi-firmware on every kernel upgrade; these settings make
# what it writes boot this image (root by label, serial and HDMI consoles).
mkdir -p /boot/firmware
cat > /etc/default/raspi-firmware <<'X'
ROOTPART=LABEL=rootfs
CONSOLES="serial0,115200 tty1"
X

apt-get update -qq
apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
  linux-image-arm64 firmware-brcm80211 wireless-regdb systemd-timesyncd
# The Pi's GPU firmware. Its kernel hooks run fine here (they skip their mount check in a container)
# and copy the kernel, initrd and DTBs to /boot/firmware, which build-image.sh moves to the FAT partition.
apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold raspi-firmware

# Wi-Fi runs as wpa_supplicant@wlan0 (appliance-wifi.service); the D-Bus variant would fail (no D-Bus)
systemctl disable wpa_supplicant.service

# The service's own system user (uid < 1000, no login, no home of its own)
useradd --system --home-dir /var/lib/appliance --no-create-home --shell /usr/sbin/nologin \
  --user-group appliance

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log
# a fresh machine-id on every board (systemd makes one on the first boot of an empty file)
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
