"""Start the appliance and Prosody side by side for a benchmark: same domain, same certificate,
same accounts, loopback ports chosen free, each in its own directory; stopped by PID.

Prosody is Debian's package (installed with apt-get when missing), run in the foreground with a
generated configuration: its equivalents of what the appliance does for a phone (roster, presence,
offline, carbons, MAM, stream management, CSI, ping, disco), c2s over STARTTLS, encryption required.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.xmpp import Endpoint

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "bench.test"
PROSODY_MODULES = ("roster", "saslauth", "tls", "disco", "presence", "carbons", "mam", "smacks", "csi_simple",
                   "ping", "offline", "posix")


class SetupError(Exception):
    """The benchmark cannot run; the message says why and what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"server exited with {proc.returncode}; its log:\n{_tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SetupError(f"port {port} never opened; the log:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """One self-signed certificate (the appliance's own code), used by both servers."""
    from appliance.net.certs import ensure_certificate
    cert, key = directory / "cert.pem", directory / "key.pem"
    ensure_certificate(cert, key, DOMAIN)
    return cert, key


@dataclass
class Server:
    name: str
    endpoint: Endpoint
    proc: subprocess.Popen
    log: Path
    log_start: int = 0    # the log's size when this process started: logs are appended across restarts

    def new_log_lines(self) -> list[str]:
        """What this server process has written to its log."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_start)
                return f.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to our own child by PID, then SIGKILL if it will not go."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# ---- the appliance -----------------------------------------------------------------------------

def start_appliance(workdir: Path, cert: Path, key: Path, accounts: dict[str, str],
                    settings: dict[str, Any] | None = None) -> Server:
    """The appliance with its defaults (TLS required, stream management, keepalive), one domain.

    `accounts` are added with `appliance user add` (one process each: for a few); `settings`
    override the configuration (top-level keys, or a dict per table such as "limits"). The data
    directory is workdir/data, kept across restarts; the log is appended to workdir/appliance.log.
    """
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    port, tls_port = free_port(), free_port()
    config = workdir / "appliance.toml"
    values: dict[str, Any] = {
        "domain": DOMAIN, "data_dir": str(data), "listen": ["127.0.0.1"], "c2s_port": port,
        "c2s_tls_port": tls_port, "tls_cert": str(cert), "tls_key": str(key), "log_level": "INFO",
        # every benchmark client comes from 127.0.0.1; the default (32) would refuse a large run
        "limits": {"connections_per_address": len(accounts) + 8},
        "http": {"enabled": False}, "mdns": {"enabled": False},  # what Prosody is not asked to do either
    }
    for name, value in (settings or {}).items():
        values[name] = {**values.get(name, {}), **value} if isinstance(value, dict) else value
    config.write_text(toml(values))
    for name, password in accounts.items():
        result = subprocess.run([sys.executable, "-m", "appliance", "user", "add", name, "--config", str(config)],
                                input=password + "\n", capture_output=True, text=True, timeout=60, cwd=ROOT)
        if result.returncode != 0:
            raise SetupError(f"appliance user add {name}: {result.stderr.strip()}")
    log = workdir / "appliance.log"
    with open(log, "ab") as out:
        log_start = out.tell()
        entry = _entry(os.environ.get("BENCH_PROFILED", ""))
        proc = subprocess.Popen([sys.executable, *entry, "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return _started(Server("appliance", Endpoint("127.0.0.1", port, DOMAIN, cert), proc, log, log_start), port)


def _entry(profiled: str) -> list[str]:
    """How to start the appliance: BENCH_PROFILED=1 under cProfile switched by signals
    (benchlib/profiled.py), BENCH_PROFILED=FILE through another wrapper script of the same kind."""
    if not profiled:
        return ["-m", "appliance"]
    return [profiled if profiled != "1" else str(Path(__file__).with_name("profiled.py"))]


def _started(server: Server, port: int) -> Server:
    try:
        wait_for_port(port, server.proc, server.log)
    except BaseException:
        server.stop()
        raise
    return server


def scalar(value: Any) -> str:
    """A boolean, number or double-quoted string: the same literal in TOML and in Lua."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml(values: dict[str, Any]) -> str:
    """A flat TOML document: scalars and lists first, then one [table] per dict."""
    def value(v: Any) -> str:
        return "[" + ", ".join(value(x) for x in v) + "]" if isinstance(v, (list, tuple)) else scalar(v)
    lines = [f"{k} = {value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for table, entries in values.items():
        if isinstance(entries, dict):
            lines += [f"[{table}]"] + [f"{k} = {value(v)}" for k, v in entries.items()]
    return "\n".join(lines) + "\n"


def appliance_version() -> str:
    result = subprocess.run([sys.executable, "-m", "appliance", "--version"], capture_output=True, text=True,
                            cwd=ROOT, timeout=30)
    head = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "appliance"],
                           capture_output=True, text=True).stdout.splitlines()
    changes = f", {len(dirty)} uncommitted changes under appliance/" if dirty else ""
    return f"{result.stdout.strip() or 'appliance'} (git {head.stdout.strip() or '?'}{changes})"


# ---- Prosody -------------------------------------------------------------------------------------

def ensure_prosody() -> None:
    """Install Debian's prosody package when it is missing, without starting its system service."""
    if shutil.which("prosody") and shutil.which("prosodyctl"):
        return
    apt_install("prosody")
    if not shutil.which("prosody"):
        raise SetupError("apt-get installed prosody but there is no `prosody` command")


def ensure_prosody_sql() -> None:
    """Prosody's SQLite driver (LuaDBI), for storage = "sql"."""
    if not Path("/usr/share/doc/lua-dbi-sqlite3").exists():
        apt_install("lua-dbi-sqlite3")


def apt_install(package: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SetupError(f"{package} is not installed and cannot be installed from here: "
                         f"run `sudo apt-get install {package}` (Debian's package) and try again")
    print(f"installing Debian's {package} package (apt-get)...", flush=True)
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:  # keep the package from starting a system-wide Prosody on 5222/5269
        policy.write_text("#!/bin/sh\n# written by scripts/benchlib while installing packages\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                raise SetupError(f"{' '.join(command)} failed:\n{result.stderr.strip()[-2000:]}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)


def prosody_version(details: bool = False) -> str:
    """"Prosody 0.12.3"; with details, also its Lua and LuaSec versions."""
    result = subprocess.run(["prosodyctl", "about"], capture_output=True, text=True, timeout=30)
    lines = result.stdout.splitlines()
    first = lines[0].strip() if lines else "Prosody ?"
    if not details:
        return first
    found = {k: v.strip() for line in lines if ":" in line for k, v in [line.split(":", 1)]
             if k in ("Lua version", "LuaSec")}
    return f"{first} ({found.get('Lua version', 'Lua ?')}, LuaSec {found.get('LuaSec', '?')})"


PROSODY_SETTINGS: dict[str, Any] = {
    "c2s_require_encryption": True,
    "authentication": "internal_hashed",
    "storage": "internal",
    "allow_registration": False,
}


def prosody_config(workdir: Path, cert: Path, key: Path, port: int, settings: dict[str, Any] | None = None,
                   extra_modules: tuple[str, ...] = ()) -> str:
    modules = "; ".join(f'"{m}"' for m in PROSODY_MODULES + extra_modules)
    root = "run_as_root = true -- the benchmark may run as root; this Prosody is a throwaway\n" \
        if os.geteuid() == 0 else ""
    options = "\n".join(f"{k} = {lua(v)}" for k, v in {**PROSODY_SETTINGS, **(settings or {})}.items())
    return f"""-- generated by scripts/benchlib/servers.py for one benchmark run
{root}pidfile = "{workdir}/prosody.pid"
data_path = "{workdir}/data"
plugin_paths = {{ }}
certificates = "{cert.parent}"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{workdir}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
s2s_ports = {{ {free_port()} }}
modules_enabled = {{ {modules} }}
{options}
ssl = {{ certificate = "{cert}"; key = "{key}" }}

VirtualHost "{DOMAIN}"
"""


def lua(value: Any) -> str:
    """A Lua literal for a configuration value: booleans, numbers, strings, tables of those."""
    if isinstance(value, dict):
        return "{ " + "; ".join(f"[{lua(k)}] = {lua(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "{ " + "; ".join(lua(v) for v in value) + " }"
    return scalar(value)


def start_prosody(workdir: Path, cert: Path, key: Path, accounts: dict[str, str],
                  settings: dict[str, Any] | None = None, extra_modules: tuple[str, ...] = ()) -> Server:
    """Prosody in the foreground; `accounts` registered with prosodyctl (one process each: for a
    few), `settings` override or add global options, `extra_modules` are enabled besides
    PROSODY_MODULES (e.g. "announce" for one benchmark). Data in workdir/data, kept across restarts."""
    ensure_prosody()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "prosody.cfg.lua"
    config.write_text(prosody_config(workdir, cert, key, port, settings, extra_modules))
    for name, password in accounts.items():
        result = subprocess.run(["prosodyctl", "--config", str(config), "register", name, DOMAIN, password],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise SetupError(f"prosodyctl register {name}: {(result.stdout + result.stderr).strip()}")
    log = workdir / "prosody.log"
    log_start = log.stat().st_size if log.exists() else 0
    with open(workdir / "prosody.out", "ab") as out:
        proc = subprocess.Popen(["prosody", "-F", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=workdir)
    return _started(Server("prosody", Endpoint("127.0.0.1", port, DOMAIN, cert), proc, log, log_start), port)
