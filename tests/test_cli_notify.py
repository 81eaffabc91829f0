"""`appliance notify` against a real server process: it reaches an online slixmpp client, `--wait`
reports the delivery, the server's reasons come back as one line, and with the server stopped it
says so and exits 1. Also the local key `serve` writes for it: 0600, replaced at every start."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from typing import Iterator

import pytest

from tests.api_client import Api, web_server
from tests.harness import ServerProcess, wait_for_port
from tests.slix import connected, run

NOTIFICATION_LINE = re.compile(r"notification (\d+) to (\d+) recipients?: (\d+) delivered, (\d+) pending")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server, _ = web_server(tmp_path_factory.mktemp("notify"))
    try:
        for name in ("alice", "bob"):
            server.add_user(name)
        yield server
    finally:
        server.stop()


def notify(server: ServerProcess, *args: str):
    return server.cli("notify", *args)


def test_reaches_an_online_client_and_wait_reports_delivered(server: ServerProcess) -> None:
    async def scenario() -> tuple[object, object]:
        alice = await connected(server, f"alice@{server.domain}")
        try:
            result = await asyncio.to_thread(
                notify, server, "--title", "Order 42 ready", "--body", "Counter 3", "--link",
                "https://shop.example/42", "--priority", "high", "--ttl", "2h", "--user", "alice", "--wait", "10")
            return result, await alice.next_message()
        finally:
            await alice.logout()
    result, message = run(scenario())
    assert result.returncode == 0, result.stderr
    found = NOTIFICATION_LINE.fullmatch(result.stdout.strip())
    assert found and found.groups()[1:] == ("1", "1", "0"), result.stdout
    assert message["type"] == "headline"
    assert (message["subject"], message["body"]) == ("Order 42 ready", "Counter 3\nhttps://shop.example/42")


def test_json_and_pending_for_an_offline_user(server: ServerProcess) -> None:
    result = notify(server, "--title", "Storm warning", "--user", f"bob@{server.domain}", "--json",
                    "--wait", "0.5")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert (status["to"], status["recipients"], status["delivered"], status["pending"]) == (
        {"users": ["bob"]}, 1, 0, 1)
    assert status["title"] == "Storm warning" and status["priority"] == "normal"
    assert status["expired"] is False and status["expires"] is not None


@pytest.mark.parametrize("audience, to", [(["--everyone"], {"everyone": True}), (["--online"], {"online": True})])
def test_everyone_and_online(server: ServerProcess, audience: list[str], to: dict) -> None:
    result = notify(server, "--title", "Closing in 10 minutes", *audience, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["to"] == to
    assert status["recipients"] == (2 if audience == ["--everyone"] else 0)


@pytest.mark.parametrize("args, code, message", [
    (["--title", "x", "--user", "zoe"], 1, "appliance notify: no such user: zoe\n"),
    (["--title", "x", "--group", "nobody"], 1, "appliance notify: no such group: nobody\n"),
    (["--title", "x", "--everyone", "--ttl", "soon"], 2, "appliance notify: bad --ttl 'soon': give a positive "
                                                         "number with a unit, e.g. 90s, 30m, 2h, 7d\n"),
    (["--title", "x", "--everyone", "--ttl", "1000d"], 2, "appliance notify: ttl must be a number of seconds"),
    (["--title", "x", "--everyone", "--link", "ftp://x"], 2, "appliance notify: link must be an http:// or https:// URL\n"),
    (["--title", "", "--everyone"], 2, "appliance notify: a notification needs a title\n"),
], ids=["unknown user", "unknown group", "bad ttl", "ttl too long", "bad link", "empty title"])
def test_refusals_are_one_line(server: ServerProcess, args: list[str], code: int, message: str) -> None:
    result = notify(server, *args)
    assert (result.returncode, result.stdout) == (code, "")
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [["--title", "x"], ["--title", "x", "--everyone", "--online"],
                                  ["--everyone"], ["--title", "x", "--everyone", "--priority", "panic"]])
def test_usage_errors(server: ServerProcess, args: list[str]) -> None:
    result = notify(server, *args)
    assert result.returncode == 2 and "usage: appliance notify" in result.stderr


def test_local_key_file_is_private_and_replaced_at_every_start(tmp_path) -> None:
    server, port = web_server(tmp_path / "restart")
    try:
        key_file = server.data / "local-api.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        first = key_file.read_text().strip()
        assert Api(server, port, first).request("GET", "/api/v1/groups").status == 200
        server.stop()
        stopped = notify(server, "--title", "x", "--everyone")
        assert (stopped.returncode, stopped.stdout) == (1, "")
        assert stopped.stderr == (f"appliance notify: the server is not running (nothing answers on 127.0.0.1 "
                                  f"port {port}); start it with `appliance serve`\n")
        server.start()
        assert server.proc is not None
        wait_for_port(port, server.proc)
        second = key_file.read_text().strip()
        assert second != first and stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert Api(server, port, first).request("GET", "/api/v1/groups").status == 401
        assert Api(server, port, second).request("GET", "/api/v1/groups").status == 200
        listed = json.loads(server.cli("apikey", "list", "--json").stdout)
        assert [key["name"] for key in listed] == ["local-cli"]
    finally:
        server.stop()


def test_never_started_says_so(tmp_path) -> None:
    server = ServerProcess(tmp_path / "never", settings={"http.enabled": True})
    server.data.mkdir(parents=True)
    server.write_config()
    result = notify(server, "--title", "x", "--everyone")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"appliance notify: the server is not running ({server.data / 'local-api.key'} "
                             "is missing); start it with `appliance serve`\n")
    off = ServerProcess(tmp_path / "off")   # the harness turns the web server off
    off.data.mkdir(parents=True)
    off.write_config()
    result = off.cli("notify", "--title", "x", "--everyone")
    assert result.returncode == 1
    assert result.stderr == "appliance notify: the web server is off ([http] enabled = false); the API needs it\n"
