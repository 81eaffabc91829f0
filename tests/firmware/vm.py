"""Boot the arm64 disk image in qemu (`-M virt`) for the firmware tests, and look at it from the host.

The image is never booted in place: `disk_copy` makes a sparse copy per test. The kernel and initrd
are copied out of the image's FAT partition with mcopy (what a Pi's firmware would load), qemu runs
under `timeout` (a hung guest cannot outlive its budget), its serial console goes to a file that the
test reads, and `stop` kills qemu by its PID. Networking is either user-mode, restricted to
host forwards (`forwards={guest_port: host_port}`; the guest reaches nothing), or a tap device
(`tap="qtap0"`, optionally inside a network namespace `netns=`), for tests that need multicast.

    with VM(disk_copy(image, tmp_path), tmp_path, forwards={5222: free_port()}) as vm:
        vm.wait_port(5222)
        match = vm.wait_console(r"xmpp:\\S+", timeout=300)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

# The partition layout made by firmware/build-image.sh: the FAT boot partition starts at 1 MiB.
BOOT_PARTITION = "@@1M"
KERNEL_CMDLINE = "root=LABEL=rootfs rw rootwait net.ifnames=0 console=ttyAMA0 panic=10"
BOOT_TIMEOUT = 900  # seconds qemu may live at most (TCG emulation on a shared 2-core machine)


class VMError(Exception):
    """The VM did not do what the test waited for; the message carries the end of its console."""


def disk_copy(image: Path, directory: Path, name: str = "disk.img") -> Path:
    """A sparse copy of `image` in `directory` (the built image is never written by a test)."""
    copy = directory / name
    subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
    return copy


def boot_files(disk: Path, directory: Path) -> tuple[Path, Path]:
    """The kernel and initrd copied out of the disk's FAT partition: (vmlinuz, initrd.img)."""
    kernel, initrd = directory / "vmlinuz", directory / "initrd.img"
    for path in (kernel, initrd):
        subprocess.run(["mcopy", "-o", "-i", f"{disk}{BOOT_PARTITION}", f"::/{path.name}", str(path)],
                       check=True, capture_output=True)
    return kernel, initrd


# An XMPP stream header: any server answers it (with its own header, or a stream error)
XMPP_HELLO = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' to='probe.invalid' version='1.0'>")


def partitions(disk: Path) -> list[dict]:
    """The disk's partition table as sfdisk reads it: [{"start": sector, "size": sectors, ...}]."""
    table = subprocess.run(["sfdisk", "-J", str(disk)], check=True, capture_output=True, text=True).stdout
    return json.loads(table)["partitiontable"]["partitions"]


def root_filesystem(disk: Path, directory: Path) -> Path:
    """A copy of the stopped VM's root file system with its ext4 journal replayed (as the next
    boot would: after a power cut, recent writes are only in the journal), for `debugfs`."""
    root = partitions(disk)[1]
    copy = directory / f"{disk.stem}-root.ext4"
    subprocess.run(["dd", f"if={disk}", f"of={copy}", "bs=1M", "conv=sparse", "status=none",
                    "iflag=skip_bytes,count_bytes", f"skip={root['start'] * 512}", f"count={root['size'] * 512}"],
                   check=True)
    replay = subprocess.run(["e2fsck", "-E", "journal_only", "-y", str(copy)], capture_output=True, text=True)
    if replay.returncode not in (0, 1):  # 1: "errors corrected", here the journal replayed
        raise VMError(f"e2fsck could not replay the journal of {disk}: {replay.stdout}{replay.stderr}")
    return copy


def debugfs(filesystem: Path, request: str, offset: int = 0) -> str:
    """Run one read-only debugfs request (e.g. "cat /etc/hostname", "ls -l /var/lib") on an ext4
    file system: a `root_filesystem` copy, or a disk image and its partition's byte offset."""
    return subprocess.run(["debugfs", "-R", request, f"{filesystem}?offset={offset}"], check=True,
                          capture_output=True, text=True).stdout


def port_open(host: str, port: int, hello: bytes | None = None, settle: float = 3.0) -> bool:
    """True when a server answers on host:port. A user-mode host forward accepts on the host side
    even while nothing listens in the guest (it closes, or resets, once the guest refuses), so:
    with `hello`, send it and count only an answer; without, count a connection that stays open
    (silent or talking) for `settle` seconds, which a slow guest can fake."""
    try:
        with socket.create_connection((host, port), timeout=settle) as sock:
            sock.settimeout(settle)
            if hello is not None:
                sock.sendall(hello)
            try:
                return sock.recv(1) != b""
            except socket.timeout:
                return hello is None
    except OSError:
        return False


class VM:
    """One qemu-system-aarch64 process booting `disk`; files (console log, kernel) go to `workdir`."""

    def __init__(self, disk: Path, workdir: Path, *, forwards: dict[int, int] | None = None,
                 tap: str | None = None, netns: str | None = None, mac: str = "52:54:00:12:34:56",
                 memory_mb: int = 512, cpus: int = 2, timeout: int = BOOT_TIMEOUT, name: str = "vm") -> None:
        if (forwards is None) == (tap is None):
            raise ValueError("give either forwards (user-mode networking) or tap")
        self.disk, self.workdir = disk, workdir
        self.forwards, self.tap, self.netns, self.mac = forwards or {}, tap, netns, mac
        self.memory_mb, self.cpus, self.timeout, self.name = memory_mb, cpus, timeout, name
        self.console_path = workdir / f"{name}-console.log"
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.boots = 0

    def command(self) -> list[str]:
        kernel, initrd = boot_files(self.disk, self.workdir)
        if self.tap:
            netdev = f"tap,id=n0,ifname={self.tap},script=no,downscript=no"
        else:
            forwards = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.forwards.items())
            netdev = f"user,id=n0,restrict=on{forwards}"
        qemu = ["timeout", "-s", "KILL", str(self.timeout), "qemu-system-aarch64",
                "-M", "virt", "-cpu", "cortex-a53", "-smp", str(self.cpus), "-m", str(self.memory_mb),
                "-kernel", str(kernel), "-initrd", str(initrd), "-append", KERNEL_CMDLINE,
                "-drive", f"file={self.disk},if=none,format=raw,id=hd,cache=unsafe",
                "-device", "virtio-blk-pci,drive=hd",
                "-netdev", netdev, "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
                "-display", "none", "-monitor", "none", "-serial", f"file:{self.console_path}"]
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + qemu

    def start(self) -> VM:
        """Boot (again: the same disk, a fresh console log for each boot)."""
        if self.proc is not None:
            raise RuntimeError("this VM is running: stop it first")
        self.boots += 1
        self.console_path = self.workdir / f"{self.name}-console-{self.boots}.log"
        command = self.command()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / f"{self.name}-qemu-{self.boots}.err", "wb"),
                                     start_new_session=True)
        return self

    def since_start(self) -> float:
        return time.monotonic() - self.started_at

    def console(self) -> str:
        """Everything the guest wrote on its serial console so far (this boot)."""
        try:
            return self.console_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern: str | re.Pattern[str], timeout: float = 300) -> re.Match[str]:
        """The first match of `pattern` in the console log, waiting for it to appear."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.console())
            if match:
                return match
            self._check_alive(f"waiting for {regex.pattern!r} on the console")
            if time.monotonic() > deadline:
                raise VMError(f"{regex.pattern!r} not on the console after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(1)

    def wait_port(self, guest_port: int, timeout: float = 300, hello: bytes | None = None) -> int:
        """Wait until the guest answers on `guest_port` through its host forward (to `hello`, e.g.
        XMPP_HELLO, when given: see port_open); the host port."""
        host_port = self.forwards[guest_port]
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", host_port, hello):
            self._check_alive(f"waiting for guest port {guest_port}")
            if time.monotonic() > deadline:
                raise VMError(f"guest port {guest_port} not answering after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(2)
        return host_port

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def _check_alive(self, doing: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise VMError(f"qemu exited ({self.proc.returncode}) while {doing}:\n{self.tail()}")

    def stop(self) -> None:
        """Power cut: SIGKILL qemu (and the `timeout` around it) by PID, then reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> VM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
