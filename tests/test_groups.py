"""Groups: the store on a real database file, `appliance group` in process, and the
/api/v1/groups routes of a real server process (a notification to a group reaches exactly its
members, seen by slixmpp clients)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Iterator

import pytest

from appliance.cli import main
from appliance.store import groups, users
from appliance.store.db import Database
from tests.api_client import Api, create_key, web_server
from tests.harness import DOMAIN as DOMAIN_OF_SERVER
from tests.slix import connected, run

DOMAIN = "example.local"


@pytest.fixture
def db(tmp_path):
    with Database.open(tmp_path / "appliance.sqlite3") as db:
        for name in ("alice", "bob", "carol"):
            db.write_sync(users.create_user, name, "pw", 4096)
        yield db


def test_store_create_list_change_delete(db):
    db.write_sync(groups.create_group, "night-shift", ["bob", "alice", "bob"])
    db.write_sync(groups.create_group, "empty", [])
    assert db.read(groups.list_groups) == [("empty", []), ("night-shift", ["alice", "bob"])]
    db.write_sync(groups.add_members, "empty", ["carol"])
    db.write_sync(groups.remove_members, "night-shift", ["alice", "carol"])  # carol was never in it
    assert db.read(groups.group_members, "empty") == ["carol"]
    assert db.read(groups.group_members, "night-shift") == ["bob"]
    assert db.write_sync(groups.set_members, "night-shift", ["carol", "alice"]) is False
    assert db.read(groups.group_members, "night-shift") == ["alice", "carol"]
    assert db.write_sync(groups.set_members, "new.one", []) is True
    assert db.write_sync(groups.delete_group, "empty") is True
    assert db.write_sync(groups.delete_group, "empty") is False
    assert db.read(groups.group_members, "empty") is None
    assert [name for name, _ in db.read(groups.list_groups)] == ["new.one", "night-shift"]


@pytest.mark.parametrize("name", ["", "a" * 65, "a/b", "with space", "x@y", "ünï"])
def test_store_refuses_bad_names(db, name):
    with pytest.raises(groups.GroupError, match="bad group name"):
        db.write_sync(groups.create_group, name, [])
    with pytest.raises(groups.GroupError, match="bad group name"):
        db.write_sync(groups.set_members, name, [])


def test_store_refuses_unknown_users_and_groups(db):
    with pytest.raises(groups.GroupError, match="no such user: dave, erin"):
        db.write_sync(groups.create_group, "staff", ["alice", "erin", "dave"])
    assert db.read(groups.group_members, "staff") is None  # nothing half-made
    db.write_sync(groups.create_group, "staff", ["alice"])
    with pytest.raises(groups.GroupError, match="already exists"):
        db.write_sync(groups.create_group, "staff", [])
    with pytest.raises(groups.GroupError, match="no such user: dave"):
        db.write_sync(groups.set_members, "staff", ["dave"])
    assert db.read(groups.group_members, "staff") == ["alice"]
    with pytest.raises(groups.NoSuchGroup):
        db.write_sync(groups.add_members, "nope", ["alice"])
    with pytest.raises(groups.NoSuchGroup):
        db.write_sync(groups.remove_members, "nope", ["alice"])


def test_deleting_an_account_removes_its_memberships(db):
    db.write_sync(groups.create_group, "staff", ["alice", "bob"])
    db.write_sync(users.delete_user, "bob")
    assert db.read(groups.list_groups) == [("staff", ["alice"])]


@pytest.fixture
def group_cli(tmp_path, capsys):
    """group_cli("create", "x") -> (exit code, stdout, stderr), on a database with alice and bob."""
    data = tmp_path / "data"
    data.mkdir()
    with Database.open(data / "appliance.sqlite3") as db:
        for name in ("alice", "bob"):
            db.write_sync(users.create_user, name, "pw", 4096)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["group", *argv, "--data", str(data), "--domain", DOMAIN])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_cli_create_add_remove_list_del(group_cli):
    assert group_cli("create", "staff", "alice", f"bob@{DOMAIN}") == (0, "created group staff: alice bob\n", "")
    assert group_cli("create", "all") == (0, "created group all\n", "")
    assert group_cli("add", "all", "Bob", "alice") == (0, "added to group all: alice bob\n", "")
    assert group_cli("remove", "staff", "alice") == (0, "removed from group staff: alice\n", "")
    assert group_cli("list") == (0, "all: alice bob\nstaff: bob\n", "")
    code, out, _ = group_cli("list", "--json")
    assert (code, out) == (0, '[{"name": "all", "members": ["alice", "bob"]}, {"name": "staff", "members": ["bob"]}]\n')
    assert group_cli("del", "staff") == (0, "deleted group staff\n", "")
    assert group_cli("remove", "all", "alice", "bob")[0] == 0
    assert group_cli("list") == (0, "all: (no members)\n", "")


def test_cli_errors(group_cli):
    assert group_cli("list") == (0, "", "no groups; make one with `appliance group create NAME [USER...]`\n")
    assert group_cli("create", "a/b") == (
        2, "", "appliance group create: bad group name 'a/b': 1-64 letters, digits, '-', '_' or '.'\n")
    assert group_cli("create", "staff", "alice", "zoe", "yann") == (
        1, "", "appliance group create: no such user: yann, zoe\n")
    assert group_cli("add", "staff", "alice") == (1, "", "no such group staff; see `appliance group list`\n")
    assert group_cli("del", "staff") == (1, "", "no such group staff; see `appliance group list`\n")
    assert group_cli("create", "staff", "alice@elsewhere.example")[0] == 2
    assert group_cli("create", "staff") == (0, "created group staff\n", "")
    assert group_cli("create", "staff") == (1, "", "appliance group create: group staff already exists\n")


def test_cli_usage_without_users(group_cli):
    with pytest.raises(SystemExit) as exited:
        group_cli("add", "staff")
    assert exited.value.code == 2



@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server, port = web_server(tmp_path_factory.mktemp("groups-api"))
    try:
        for name in ("alice", "bob", "carol"):
            server.add_user(name)
        api = Api(server, port)
        api.key = create_key(server, "groups")
        yield api
    finally:
        server.stop()


def test_api_put_get_list_delete(api: Api) -> None:
    created = api.request("PUT", "/api/v1/groups/kitchen", {"members": ["bob", f"alice@{DOMAIN_OF_SERVER}"]})
    assert (created.status, created.json) == (201, {"name": "kitchen", "members": ["alice", "bob"]})
    assert created.headers["Location"] == "/api/v1/groups/kitchen"
    replaced = api.request("PUT", "/api/v1/groups/kitchen", {"members": ["carol", "Carol"]})
    assert (replaced.status, replaced.json) == (200, {"name": "kitchen", "members": ["carol"]})
    assert "Location" not in replaced.headers
    shown = api.request("GET", "/api/v1/groups/kitchen")
    assert (shown.status, shown.json) == (200, {"name": "kitchen", "members": ["carol"]})
    assert api.request("PUT", "/api/v1/groups/empty.one", {"members": []}).status == 201
    listed = api.request("GET", "/api/v1/groups").json["groups"]
    assert {"name": "empty.one", "members": []} in listed and {"name": "kitchen", "members": ["carol"]} in listed
    deleted = api.request("DELETE", "/api/v1/groups/empty.one")
    assert (deleted.status, deleted.body) == (204, b"")
    assert api.request("GET", "/api/v1/groups/empty.one").status == 404


def test_cli_and_api_change_the_same_groups(api: Api) -> None:
    made = api.server.cli("group", "create", "bar", "alice")
    assert made.returncode == 0, made.stderr
    assert api.request("GET", "/api/v1/groups/bar").json["members"] == ["alice"]
    assert api.request("PUT", "/api/v1/groups/bar", {"members": ["alice", "bob"]}).status == 200
    listed = api.server.cli("group", "list", "--json")
    assert {"name": "bar", "members": ["alice", "bob"]} in json.loads(listed.stdout)
    deleted_user = api.server.cli("user", "del", "bob")
    assert deleted_user.returncode == 0, deleted_user.stderr
    assert api.request("GET", "/api/v1/groups/bar").json["members"] == ["alice"]
    api.server.add_user("bob")   # back for the other tests


def test_a_notification_to_a_group_reaches_exactly_its_members(api: Api) -> None:
    assert api.request("PUT", "/api/v1/groups/deck", {"members": ["alice", "bob"]}).status in (200, 201)
    domain = api.server.domain

    async def scenario() -> tuple[list[Any], list[Any]]:
        clients = {name: await connected(api.server, f"{name}@{domain}") for name in ("alice", "bob", "carol")}
        try:
            sent = await asyncio.to_thread(api.notify, {"group": "deck"}, title="All hands on deck")
            assert (sent["recipients"], sent["to"]) == (2, {"group": "deck"})
            got = [await clients[name].next_message() for name in ("alice", "bob")]
            await asyncio.to_thread(api.notify, {"users": ["carol"]}, title="Only for carol")
            carol = await clients["carol"].next_message()   # the first thing carol gets is hers
            return got, [carol, *[c.messages.get_nowait() for c in clients.values() if not c.messages.empty()]]
        finally:
            for client in clients.values():
                await client.logout()

    members, others = run(scenario())
    assert [(m["type"], m["subject"], m["to"].bare) for m in members] == [
        ("headline", "All hands on deck", f"alice@{domain}"), ("headline", "All hands on deck", f"bob@{domain}")]
    assert [m["subject"] for m in others] == ["Only for carol"]
