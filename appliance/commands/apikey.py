"""`appliance apikey create|list|revoke`: the bearer keys of the notification API.

`create NAME` prints the key once (only its SHA-256 is stored: a lost key is revoked and replaced,
never shown again). Works while the server runs (SQLite in WAL mode); the server reads keys on
each request, so a revoked key stops working at once. docs/notifications.md has the details.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone

from appliance.commands import load_config
from appliance.commands.user import FAILED, OK, UsageError, guarded, open_existing
from appliance.store import api_keys
from appliance.store.db import Database


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("apikey", help="create, list and revoke notification API keys")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[parent], help="make a key and print it (once)")
    create.add_argument("name", help="what the key is for, e.g. doorbell (1-64 letters, digits, - _ .)")
    create.add_argument("--json", action="store_true", help='print {"name": .., "key": ..}')
    create.set_defaults(run=guarded(run_create))
    listing = actions.add_parser("list", parents=[parent], help="list the keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    listing.set_defaults(run=guarded(run_list))
    revoke = actions.add_parser("revoke", parents=[parent], help="make a key unusable")
    revoke.add_argument("name")
    revoke.set_defaults(run=guarded(run_revoke))


def run_create(args: argparse.Namespace) -> int:
    config = load_config(args)
    secret = api_keys.new_secret()
    with Database.open(config.database_path) as db:
        try:
            db.write_sync(api_keys.insert_key, args.name, secret, time.time())
        except api_keys.ApiKeyError as exc:
            raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps({"name": args.name, "key": secret}))
    else:
        print(f"API key {args.name!r} (shown only now; keep it secret):\n{secret}")
    return OK


def run_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_existing(config) as db:
        keys = db.read(api_keys.list_keys) if db is not None else []
    if args.json:
        print(json.dumps([{"name": k.name, "created": _when(k.created), "last_used": _when(k.last_used),
                           "revoked": k.revoked} for k in keys]))
        return OK
    if not keys:
        print("no API keys; `appliance apikey create NAME` makes one")
    for key in keys:
        state = "revoked" if key.revoked else f"last used {_when(key.last_used) or 'never'}"
        print(f"{key.name}\tcreated {_when(key.created)}\t{state}")
    return OK


def run_revoke(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_existing(config) as db:
        revoked = db is not None and db.write_sync(api_keys.revoke, args.name)
        known = revoked or (db is not None and any(k.name == args.name for k in db.read(api_keys.list_keys)))
    if not known:
        print(f"no API key named {args.name!r}; see `appliance apikey list`", file=sys.stderr)
        return FAILED
    print(f"revoked API key {args.name!r}" + ("" if revoked else " (it already was)"))
    return OK


def _when(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
