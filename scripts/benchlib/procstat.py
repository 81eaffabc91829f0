"""What the operating system knows about a server process, and the machine it runs on.

CPU is utime + stime from /proc/PID/stat (all threads of the process), memory is VmRSS from
/proc/PID/status, disk writes are write_bytes from /proc/PID/io: bytes the process caused to be
sent to the storage layer, counted when a page is first dirtied (log files included; rewriting a
page that is already dirty is not counted again).

The appliance also counts what the OS cannot see (SQLite commits and write calls): on SIGUSR1 it
logs one line `stats {json}`, read back here from its log.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One reading of a process: CPU seconds so far, resident memory now, disk writes so far."""
    at: float              # time.monotonic()
    cpu: float             # seconds, user + system
    rss: int               # bytes
    write_bytes: int       # bytes, cumulative
    system_cpu: float = 0.0  # seconds, system (kernel) part of cpu

    def __sub__(self, earlier: Sample) -> Usage:
        return Usage(self.at - earlier.at, self.cpu - earlier.cpu, self.rss - earlier.rss,
                     self.write_bytes - earlier.write_bytes, self.rss,
                     self.system_cpu - earlier.system_cpu)


@dataclass(frozen=True)
class Usage:
    """What happened between two samples."""
    seconds: float
    cpu: float             # CPU seconds used
    rss_growth: int        # bytes (negative if it shrank)
    write_bytes: int
    rss: int               # at the end
    system_cpu: float = 0.0  # CPU seconds spent in the kernel (included in cpu)

    @property
    def cpu_share(self) -> float:
        """Average share of one core."""
        return self.cpu / self.seconds if self.seconds > 0 else 0.0


def sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/stat") as f:
        # the command name may hold spaces and parentheses: the fields start after the last ')'
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])   # fields 14 and 15 of proc(5)
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
    return Sample(time.monotonic(), (utime + stime) / TICKS, rss_kb * 1024, _write_bytes(pid),
                  stime / TICKS)


def _write_bytes(pid: int) -> int:
    try:
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:  # not readable for another user's process
        return 0
    found = re.search(r"^write_bytes:\s+(\d+)", io, re.M)
    return int(found.group(1)) if found else 0


def machine_cpu() -> float:
    """CPU seconds all processes of the machine have used since boot (busy time of every core)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def own_cpu() -> float:
    """CPU seconds of this process (the load generator), all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_open_files() -> int:
    """Raise this process's soft limit on open files to the hard limit (servers started later
    inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---- the appliance's own counters ------------------------------------------------------------------

STATS = re.compile(r"\bstats (\{.*\})\s*$")


def appliance_stats(pid: int, log: Path, timeout: float = 10.0) -> dict[str, int]:
    """Send SIGUSR1 and wait for the new `stats {...}` line in the log; its counters (cumulative
    since the server started). Raises TimeoutError if no new line appears."""
    start = log.stat().st_size if log.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(start)
            found = [m for line in f.read().decode(errors="replace").splitlines() if (m := STATS.search(line))]
        if found:
            return json.loads(found[-1].group(1))
        time.sleep(0.02)
    raise TimeoutError(f"no stats line in {log} within {timeout:.0f} s of SIGUSR1")


# ---- the machine -----------------------------------------------------------------------------------

def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine disturbs the figures."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M).group(1))  # type: ignore[union-attr]
    distro = ""
    try:
        distro = re.search(r'^PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text(), re.M).group(1)  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    return {
        "host": platform.node(),
        "cpu": f"{os.cpu_count()} x {models[0] if models else platform.processor() or '?'}",
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "os": distro,
        "python": platform.python_version(),
        "open files limit": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
    }
