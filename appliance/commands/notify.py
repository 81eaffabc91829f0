"""`appliance notify`: send a notification from scripts and cron, with the options of the HTTP API.

Unlike `appliance user`, this cannot work on the database alone: a notification is delivered by
the running server to the sessions it holds. So it calls the server's own API on the loopback
address, with the key `serve` writes to DATA_DIR/local-api.key (readable by the appliance's user
only, replaced at every start). `--wait S` then polls the notification's status until every
recipient has it or S seconds have passed. docs/notifications.md has the details.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from appliance.commands import load_config
from appliance.commands.local_api import LocalApi, ServerUnreachable
from appliance.commands.user import FAILED, OK, USAGE, UsageError

PRIORITIES = ("low", "normal", "high", "urgent")
_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("notify", parents=[parent], help="send a notification through the running server")
    parser.add_argument("--title", required=True, help="shown as the message subject")
    parser.add_argument("--body", default="", help="the text under the title")
    parser.add_argument("--link", metavar="URL", help="an http(s) link sent with it (XEP-0066)")
    parser.add_argument("--priority", choices=PRIORITIES, default="normal")
    parser.add_argument("--ttl", metavar="DURATION",
                        help="how long it may wait for an offline recipient, e.g. 90s, 30m, 2h, 7d "
                             "(default: [notifications] default_ttl_hours)")
    audience = parser.add_mutually_exclusive_group(required=True)
    audience.add_argument("--user", nargs="+", metavar="USER", help="these users (NAME or NAME@DOMAIN)")
    audience.add_argument("--group", metavar="GROUP", help="the members of this group")
    audience.add_argument("--everyone", action="store_true", help="every account")
    audience.add_argument("--online", action="store_true", help="every account online now")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument("--wait", type=float, metavar="SECONDS",
                        help="wait up to SECONDS until every recipient has it, then report")
    parser.set_defaults(run=run_notify)


def run_notify(args: argparse.Namespace) -> int:
    config = load_config(args)
    try:
        body = request_body(args)
    except UsageError as exc:
        print(f"appliance notify: {exc}", file=sys.stderr)
        return USAGE
    try:
        api = LocalApi.for_config(config)
        status_code, status = api.call("POST", "/api/v1/notifications", body)
        if status_code != 201:
            return _refused(status_code, status)
        if args.wait is not None:
            status = api.wait_delivered(status["id"], args.wait)
    except ServerUnreachable as exc:
        print(f"appliance notify: {exc}", file=sys.stderr)
        return FAILED
    print(json.dumps(status) if args.json else _summary(status))
    return OK


def request_body(args: argparse.Namespace) -> dict[str, object]:
    """The POST /api/v1/notifications body the options ask for."""
    if args.user:
        to: dict[str, object] = {"users": args.user}
    elif args.group:
        to = {"group": args.group}
    else:
        to = {"online": True} if args.online else {"everyone": True}
    body: dict[str, object] = {"title": args.title, "body": args.body, "priority": args.priority, "to": to}
    if args.link:
        body["link"] = args.link
    if args.ttl:
        body["ttl"] = ttl_seconds(args.ttl)
    if args.wait is not None and args.wait < 0:
        raise UsageError("--wait must not be negative")
    return body


def ttl_seconds(text: str) -> float:
    """'90', '90s', '30m', '2h', '7d' -> seconds (the server enforces the maximum)."""
    match = _TTL.fullmatch(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"bad --ttl {text!r}: give a positive number with a unit, e.g. 90s, 30m, 2h, 7d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _summary(status: dict) -> str:
    line = (f"notification {status['id']} to {status['recipients']} recipient"
            f"{'' if status['recipients'] == 1 else 's'}: {status['delivered']} delivered, "
            f"{status['pending']} pending")
    return line + (" (expired)" if status["expired"] else "")


def _refused(status_code: int, error: dict) -> int:
    """The server's reason on one line; a bad request is a usage error, like on the other commands."""
    print(f"appliance notify: {error.get('reason', f'HTTP {status_code}')}", file=sys.stderr)
    return USAGE if status_code in (400, 413, 415, 422) else FAILED
