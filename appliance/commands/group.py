"""`appliance group list|create|add|remove|del`: named sets of users to send notifications to.

Like `appliance user`, this works while the server runs (SQLite in WAL mode); the API's
/api/v1/groups routes and the admin page change the same tables. Users are given as NAME or
NAME@DOMAIN; every member must be an account.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from appliance.commands import load_config
from appliance.commands.user import FAILED, OK, UsageError, guarded, open_existing, parse_name
from appliance.store import groups
from appliance.store.db import Database


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("group", help="create, change and list groups of users (for notifications)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[parent], help="print every group and its members")
    listing.add_argument("--json", action="store_true", help="one JSON array of {name, members}")
    listing.set_defaults(run=guarded(run_list))
    create = actions.add_parser("create", parents=[parent], help="make a group, optionally with members")
    create.add_argument("name", help="1-64 letters, digits, '-', '_' or '.'")
    create.add_argument("users", nargs="*", metavar="USER")
    create.set_defaults(run=guarded(_changing(groups.create_group, "created group {name}")))
    add = actions.add_parser("add", parents=[parent], help="add users to a group")
    add.add_argument("name")
    add.add_argument("users", nargs="+", metavar="USER")
    add.set_defaults(run=guarded(_changing(groups.add_members, "added to group {name}")))
    remove = actions.add_parser("remove", parents=[parent], help="take users out of a group")
    remove.add_argument("name")
    remove.add_argument("users", nargs="+", metavar="USER")
    remove.set_defaults(run=guarded(_changing(groups.remove_members, "removed from group {name}")))
    delete = actions.add_parser("del", parents=[parent], help="delete a group (not its users)")
    delete.add_argument("name")
    delete.set_defaults(run=guarded(run_del))


def run_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_existing(config) as db:
        listed = db.read(groups.list_groups) if db is not None else []
    if args.json:
        print(json.dumps([{"name": name, "members": members} for name, members in listed]))
        return OK
    for name, members in listed:
        print(f"{name}: {' '.join(members) if members else '(no members)'}")
    if not listed:
        print("no groups; make one with `appliance group create NAME [USER...]`", file=sys.stderr)
    return OK


def _changing(change: Callable[..., object], done: str) -> Callable[[argparse.Namespace], int]:
    """An action that applies `change(conn, name, members)` and prints `done` with the members."""
    def run(args: argparse.Namespace) -> int:
        config = load_config(args)
        name = _group_name(args.name)
        members = [parse_name(user, config.domain) for user in args.users]
        try:
            with Database.open(config.database_path) as db:
                db.write_sync(change, name, members)
        except groups.NoSuchGroup:
            return _missing(name)
        except groups.GroupError as exc:
            print(f"appliance group {args.action}: {exc}", file=sys.stderr)
            return FAILED
        print(done.format(name=name) + (f": {' '.join(sorted(set(members)))}" if members else ""))
        return OK
    return run


def run_del(args: argparse.Namespace) -> int:
    config = load_config(args)
    name = _group_name(args.name)
    with open_existing(config) as db:
        if db is None or not db.write_sync(groups.delete_group, name):
            return _missing(name)
    print(f"deleted group {name}")
    return OK


def _group_name(text: str) -> str:
    try:
        groups.check_group_name(text)
    except groups.GroupError as exc:
        raise UsageError(str(exc)) from None
    return text


def _missing(name: str) -> int:
    print(f"no such group {name}; see `appliance group list`", file=sys.stderr)
    return FAILED
