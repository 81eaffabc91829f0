"""The `appliance` command line against a running server and on its own: accounts made and removed
while clients log in over the network, `config show`, `routes`, `--version`, and SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from appliance import __version__
from tests.harness import PASSWORD, ServerProcess
from tests.slix import Client, run


def appliance(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The command line as a user runs it: a separate process."""
    return subprocess.run([sys.executable, "-m", "appliance", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


async def try_login(server: ServerProcess, jid: str, password: str = PASSWORD) -> list[str]:
    """Log in and out with slixmpp; returns the SASL failure conditions ([] when it worked)."""
    c = Client(server, jid, password)
    failures: list[str] = []
    c.add_event_handler("failed_auth", lambda stanza: failures.append(stanza["condition"]))
    try:
        await c.login(send_presence=False, get_roster=False)
    except PermissionError:
        assert failures
        return failures
    await c.plugin["xep_0199"].ping(jid=server.domain, timeout=5)
    await c.logout()
    return []


# ---- accounts while the server runs ---------------------------------------------------------------


def test_user_add_then_login_over_the_network(server: ServerProcess) -> None:
    assert set(run(try_login(server, f"clinew@{server.domain}"))) == {"not-authorized"}  # not yet
    result = server.cli("user", "add", "clinew", stdin=PASSWORD + "\n")
    assert (result.returncode, result.stdout) == (0, f"created user clinew@{server.domain}\n")
    assert run(try_login(server, f"clinew@{server.domain}")) == []
    assert "authenticated as clinew with SCRAM-SHA-256" in server.log_text()


def test_user_passwd_while_running(server: ServerProcess) -> None:
    jid = server.add_user("clipass", "first password")
    result = server.cli("user", "passwd", "clipass", stdin="second password\n")
    assert result.returncode == 0, result.stderr
    assert run(try_login(server, jid, "second password")) == []
    assert set(run(try_login(server, jid, "first password"))) == {"not-authorized"}


def test_user_del_then_login_fails(server: ServerProcess) -> None:
    jid = server.add_user("clidel")
    assert run(try_login(server, jid)) == []
    result = server.cli("user", "del", "clidel")
    assert result.returncode == 0, result.stderr
    assert "deleted user clidel@appliance.test" in result.stdout
    assert set(run(try_login(server, jid))) == {"not-authorized"}
    assert "clidel@" not in server.cli("user", "list").stdout


# ---- config show ---------------------------------------------------------------------------------------


def test_config_show_prints_effective_toml(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('domain = "Chat.Example.ORG"\nallow_registration = true\n'
                      f'data_dir = "{tmp_path / "state"}"\n'
                      "[limits]\nconnections_per_address = 7\nlogin_failure_window = 60\n"
                      "[keepalive]\nping_interval = 600\n")
    result = appliance("config", "show", "--config", str(config))
    assert result.returncode == 0, result.stderr
    shown = tomllib.loads(result.stdout)

    # From the file (the domain normalised to lower case)...
    assert shown["domain"] == "chat.example.org"
    assert shown["allow_registration"] is True
    assert shown["data_dir"] == str(tmp_path / "state")
    assert shown["limits"]["connections_per_address"] == 7
    assert shown["limits"]["login_failure_window"] == 60
    assert shown["keepalive"]["ping_interval"] == 600
    # ...and the embedded defaults for everything else.
    assert shown["c2s_port"] == 5222 and shown["c2s_tls_port"] == 5223
    assert shown["require_tls"] is True
    assert shown["listen"] == ["0.0.0.0", "::"]
    assert shown["scram_iterations"] == 10000
    assert shown["log_level"] == "INFO"
    assert shown["limits"]["max_stanza_bytes"] == 262144 and shown["limits"]["max_depth"] == 32
    assert shown["limits"]["login_failures_per_account"] == 5
    assert shown["keepalive"]["ping_timeout"] == 60
    assert not (tmp_path / "state").exists()  # showing the configuration creates nothing

    # What it prints is a configuration file that means the same thing.
    again = tmp_path / "shown.toml"
    again.write_text(result.stdout)
    second = appliance("config", "show", "--config", str(again))
    assert (second.returncode, second.stdout) == (0, result.stdout)


def test_config_show_command_line_overrides(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('domain = "from.file"\n')
    result = appliance("config", "show", "--config", str(config), "--domain", "from.flag",
                       "--data", str(tmp_path / "d"))
    assert result.returncode == 0, result.stderr
    shown = tomllib.loads(result.stdout)
    assert (shown["domain"], shown["data_dir"]) == ("from.flag", str(tmp_path / "d"))


@pytest.mark.parametrize("content, mentions", [
    ('domain = "x"\nnot_a_setting = 1\n', "not_a_setting"),
    ("domain = \n", "appliance.toml"),
    ('[limits]\nmax_depth = "deep"\n', "max_depth"),
    ("[limits]\nmax_depth = -1\n", "max_depth"),
    ('require_tls = "yes"\n', "require_tls"),
    ('limits = 3\n', "limits"),
    ('[limits]\nunknown_limit = 3\n', "unknown_limit"),
    ('[storage]\ncommit_delay_ms = 5000\n', "commit_delay_ms must be at most 1000"),
    ('domain = "box.lan"\n[components]\nsecrets = ["push.other.org=s"]\n', "subdomain.box.lan=secret"),
    ('domain = "box.lan"\n[components]\nsecrets = ["push.box.lan"]\n', "subdomain.box.lan=secret"),
], ids=["unknown-key", "bad-syntax", "wrong-type", "negative", "not-a-bool", "not-a-table", "unknown-in-table",
        "commit-delay-too-long", "component-elsewhere", "component-without-secret"])
def test_config_show_bad_file(tmp_path: Path, content: str, mentions: str) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(content)
    result = appliance("config", "show", "--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("appliance: configuration error:"), result.stderr
    assert mentions in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_config_show_missing_file(tmp_path: Path) -> None:
    result = appliance("config", "show", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "nope.toml" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_bad_config_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('allow_registration = "maybe"\n')
    result = appliance("serve", "--config", str(config))
    assert result.returncode == 2
    assert "allow_registration must be true or false" in result.stderr


@pytest.mark.parametrize("address, why", [
    ("127.0.0.1", "Address already in use. Another program holds it: is the appliance already running? "
                  "Stop that one, or choose other ports in the configuration"),
    ("192.0.2.1", "Cannot assign requested address. No such address on this machine: check `listen` in "
                  "the configuration"),  # TEST-NET-1: on no machine
])
def test_serve_on_a_port_it_cannot_open_says_why_in_one_line(server: ServerProcess, tmp_path: Path,
                                                             address: str, why: str) -> None:
    """The running test server's c2s port again (a second server started by mistake), or an
    address this machine does not have: exit 1 and one line naming the port and what to do."""
    config = tmp_path / "appliance.toml"
    config.write_text(f'domain = "second.test"\ndata_dir = "{tmp_path / "data"}"\nlisten = ["{address}"]\n'
                      f"c2s_port = {server.port}\nc2s_tls_port = 0\n"
                      "[http]\nenabled = false\n[mdns]\nenabled = false\n[components]\nport = 0\n")
    result = appliance("serve", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("appliance serve:")]
    assert said == [f"appliance serve: could not listen for clients on port {server.port} ({address}): {why}"]


# ---- routes, version ----------------------------------------------------------------------------------------


def test_routes(server: ServerProcess) -> None:
    result = server.cli("routes")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["KIND", "TARGET", "NAMESPACE", "PRIO", "HANDLER"]
    table = [row.split() for row in rows]
    assert all(len(cells) == 5 for cells in table), result.stdout
    handlers = {(kind, target, namespace): handler for kind, target, namespace, _, handler in table}
    for namespace, feature in [("http://jabber.org/protocol/disco#info", "disco"),
                               ("http://jabber.org/protocol/disco#items", "disco"), ("urn:xmpp:ping", "ping"),
                               ("jabber:iq:version", "version"), ("jabber:iq:register", "register")]:
        handler = handlers.get(("iq", "server", namespace))
        assert handler and handler.startswith(feature + "."), f"iq/server/{namespace} missing:\n{result.stdout}"
    # Password change and removal are addressed to the server or to one's own account.
    assert handlers.get(("iq", "account", "jabber:iq:register"), "").startswith("register."), result.stdout
    # Columns line up: every row starts its namespace where the header's NAMESPACE does.
    column = header.index("NAMESPACE")
    assert all(row[column - 1] == " " and row[column] != " " for row in rows), result.stdout


def test_version() -> None:
    result = appliance("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"appliance {__version__}"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", __version__)


def test_no_command_is_a_usage_error() -> None:
    result = appliance()
    assert result.returncode == 2 and "usage: appliance" in result.stderr


# ---- SIGTERM -----------------------------------------------------------------------------------------------


def test_sigterm_shutdown(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    jid = fresh_server.add_user("stayer")

    async def scenario() -> tuple[list[str], float]:
        c = Client(fresh_server, jid)
        gone = asyncio.Event()
        c.add_event_handler("disconnected", lambda _: gone.set())
        await c.login(send_presence=False, get_roster=False)
        assert fresh_server.proc is not None
        started = time.monotonic()
        fresh_server.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gone.wait(), 10)
        return [e["condition"] for e in c.stream_errors], time.monotonic() - started

    errors, took = run(scenario())
    assert errors == ["system-shutdown"]
    assert took < 5
    assert fresh_server.proc is not None
    assert fresh_server.proc.wait(timeout=5) == 0
    log = fresh_server.log_text()
    assert "received SIGTERM" in log
    assert "shutting down: closing 1 sessions" in log
    assert log.rstrip().endswith("stopped; database closed cleanly"), log[-500:]
    assert "Traceback" not in log


def _port_free(port: int) -> bool:
    import socket
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def test_serve_with_no_configuration_uses_embedded_defaults(tmp_path: Path) -> None:
    """What scripts/run.sh does: no file at all; ./data appears with the database and a certificate,
    and the standard ports 5222 (STARTTLS) and 5223 (direct TLS) answer."""
    if not (_port_free(5222) and _port_free(5223)):
        pytest.skip("ports 5222/5223 are taken on this machine")
    from tests.harness import wait_for_port
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--domain", "default.test"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(5222, proc)
        wait_for_port(5223, proc)
        data = tmp_path / "data"
        assert (data / "appliance.sqlite3").exists()
        assert (data / "tls" / "cert.pem").exists() and (data / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, output
    assert "created a self-signed certificate" in output and "database closed cleanly" in output
