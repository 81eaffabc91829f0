#!/usr/bin/env bash
# foreign-chroot.sh ROOTFS CMD...  Run CMD as root inside a Debian tree of this machine's
# architecture or of arm64, with /proc, /sys and /dev, and return its exit code.
#
# For arm64 the tree's programs run under qemu-user through a binfmt_misc instance that belongs to
# a private user namespace (Linux >= 6.7): the host's global binfmt table is never touched, so
# nothing is left registered when this returns. Needs root (the identity uid/gid map is written
# from outside) and Debian's qemu-user-static. The pid namespace ends every process started inside
# when CMD exits. Environment: container=lxc (debootstrap's second stage skips mknod, refused in a
# user namespace; /dev is bind-mounted anyway).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 ROOTFS CMD..." >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: must run as root (it maps root into a user namespace)" >&2; exit 2; }
ROOTFS="$(realpath "$1")"; shift
[ -d "$ROOTFS/usr" ] || { echo "$0: $ROOTFS is not a root file system" >&2; exit 2; }

binfmt_conf=""
if [ -e "$ROOTFS/lib/ld-linux-aarch64.so.1" ] && [ "$(uname -m)" != aarch64 ]; then
  binfmt_conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -r "$binfmt_conf" ] || { echo "$0: $binfmt_conf missing: apt-get install qemu-user-static" >&2; exit 2; }
fi

sync_dir="$(mktemp -d)"; trap 'rm -rf "$sync_dir"' EXIT
mkfifo "$sync_dir/go"
# The child waits on the fifo until this shell has written its uid/gid maps.
ROOTFS="$ROOTFS" BINFMT_CONF="$binfmt_conf" SYNC="$sync_dir/go" \
unshare --user --mount --propagation private --pid --fork bash -c '
  set -e
  read -r _ < "$SYNC"
  if [ -n "$BINFMT_CONF" ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    cat "$BINFMT_CONF" > /proc/sys/fs/binfmt_misc/register
  fi
  mount -t proc proc "$ROOTFS/proc"
  mount --rbind /sys "$ROOTFS/sys"
  mount --rbind /dev "$ROOTFS/dev"
  # pip and apt inside trust the host'"'"'s authorities (pip fails with CERTIFICATE_VERIFY_FAILED otherwise)
  if [ -r /etc/ssl/certs/ca-certificates.crt ] && [ -d "$ROOTFS/etc/ssl/certs" ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  fi
  [ -e "$ROOTFS/etc/resolv.conf" ] || cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
  exec env -i container=lxc HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOTFS" "$@"
' foreign-chroot "$@" <&0 &   # a background job's stdin would be /dev/null
child=$!
# unshare(2) has not necessarily happened yet: a map can only be written once the child is in its
# own user namespace
for _ in $(seq 200); do
  [ "$(readlink "/proc/$child/ns/user" 2>/dev/null)" != "$(readlink /proc/self/ns/user)" ] && break
  sleep 0.05
done
echo "0 0 65536" > "/proc/$child/uid_map"
echo "0 0 65536" > "/proc/$child/gid_map"
echo go > "$sync_dir/go"
# unshare blocks SIGTERM and SIGINT while it waits, and CMD is PID 1 of its pid namespace, so pass
# them on to CMD ourselves (an init gets a signal from outside only if it handles it): a caller that
# stops this script with SIGTERM stops CMD, instead of leaving it running.
forward() { for pid in $(cat "/proc/$child/task/$child/children" 2>/dev/null); do kill -"$1" "$pid" 2>/dev/null; done; }
trap 'forward TERM' TERM
trap 'forward INT' INT
set +e
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || exit $rc   # else a forwarded signal interrupted the wait
done
