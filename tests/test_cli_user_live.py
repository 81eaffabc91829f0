"""`appliance user del` while the server runs: it goes through the server, which closes the
account's open sessions at once (a row deleted behind the server's back left them chatting until
they disconnected), and the API route it uses (DELETE /api/v1/users/NAME) refuses every key but
the server's local one. With the server stopped it works on the database alone (test_cli_user.py)."""

from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

from appliance.store import users
from tests.api_client import Api, create_key, database, web_server
from tests.harness import ServerProcess
from tests.slix import connected, run


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    server, port = web_server(tmp_path_factory.mktemp("userdel"))
    try:
        yield server, port
    finally:
        server.stop()


def _exists(server: ServerProcess, name: str) -> bool:
    with database(server) as conn:
        return users.user_exists(conn, name)


def test_del_closes_the_open_sessions_of_the_account(served: tuple[ServerProcess, int]) -> None:
    server, _ = served
    carol, dave = server.add_users("carol", "dave")
    name = carol.split("@")[0]

    async def scenario() -> tuple[object, list[str], bool]:
        removed = await connected(server, carol)
        other = await connected(server, dave)
        try:
            result = await asyncio.to_thread(server.cli, "user", "del", name)
            await asyncio.wait_for(removed.gone.wait(), 10)
            return result, [error["condition"] for error in removed.stream_errors], other.gone.is_set()
        finally:
            await other.logout()
    result, conditions, other_gone = run(scenario())
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"deleted user {carol} with its roster and offline messages\n"
    assert conditions == ["not-authorized"]  # "this account has been removed"
    assert not other_gone
    assert not _exists(server, name)
    again = server.cli("user", "del", name)
    assert (again.returncode, again.stderr) == (1, f"no such user {carol}; see `appliance user list`\n")


def test_the_route_is_for_the_local_key_only(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    (erin,) = server.add_users("erin")
    name = erin.split("@")[0]
    reply = Api(server, port, create_key(server, "script")).request("DELETE", f"/api/v1/users/{name}")
    assert reply.status == 403 and reply.json["error"] == "forbidden"
    assert "appliance user del" in reply.json["reason"]
    assert _exists(server, name)
    local = (server.data / "local-api.key").read_text().strip()
    assert Api(server, port, local).request("DELETE", "/api/v1/users/nobody").status == 404
    assert Api(server, port, local).request("DELETE", f"/api/v1/users/{name}").status == 204
    assert not _exists(server, name)
