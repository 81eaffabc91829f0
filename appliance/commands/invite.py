"""`appliance invite create|list|show|revoke`: invites for QR pairing, from the box's shell.

An account invite (the default) lets someone register; `--contact USER` makes a contact invite
from USER (the newcomer and USER end up subscribed to each other). The URI always carries the TLS
certificate's pin, so the certificate is made here if `serve` has not made it yet. Like `appliance
user`, this works while the server runs (SQLite in WAL mode). docs/pairing.md has the details.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from appliance.commands import load_config
from appliance.commands.user import FAILED, OK, UsageError, guarded, open_existing, parse_name
from appliance.config import Config
from appliance.net import certs
from appliance.pairing import printout, qr
from appliance.pairing.invites import ACCOUNT, CONTACT, Invite, new_invite
from appliance.store import invites as store
from appliance.store import users
from appliance.store.db import Database

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PREFIX = 8      # characters of a token that `list` shows and that identify an invite
MIN_PREFIX = 4  # fewer than this could name a random invite by accident


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("invite", help="create, list, show and revoke invites (QR pairing)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    output = _output_options()
    create = actions.add_parser("create", parents=[parent, output], help="make an invite")
    create.add_argument("--contact", metavar="USER", help="a contact invite from USER (default: an account invite)")
    create.add_argument("--username", metavar="NAME", help="preset the new account's user name")
    count = create.add_mutually_exclusive_group()
    count.add_argument("--uses", type=int, metavar="N", help="how many accounts it may create (default 1; 0: unlimited)")
    count.add_argument("--unlimited", action="store_true", help="any number of uses until it expires")
    create.add_argument("--expires", metavar="DURATION",
                        help="e.g. 7d, 12h, 30m or never (default: [invites] expiry_days)")
    create.add_argument("--admin", action="store_true", help="the account it creates is an administrator")
    create.set_defaults(run=guarded(run_create))
    listing = actions.add_parser("list", parents=[parent], help="list the usable invites")
    listing.add_argument("--all", action="store_true", help="also revoked, expired and used-up ones")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    listing.set_defaults(run=guarded(run_list))
    show = actions.add_parser("show", parents=[parent, output], help="print an invite's URI and QR again")
    show.add_argument("token", help="the token, or its first characters as `list` shows them")
    show.set_defaults(run=guarded(run_show))
    revoke = actions.add_parser("revoke", parents=[parent], help="make an invite unusable")
    revoke.add_argument("token", help="the token, or its first characters as `list` shows them")
    revoke.set_defaults(run=guarded(run_revoke))


def _output_options() -> argparse.ArgumentParser:
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--no-qr", action="store_true", help="no QR code on the terminal")
    output.add_argument("--json", action="store_true", help="one JSON object (no QR), for scripts")
    output.add_argument("--png", type=Path, metavar="FILE", help="also write the QR code as PNG")
    output.add_argument("--svg", type=Path, metavar="FILE", help="also write the QR code as SVG")
    return output


def run_create(args: argparse.Namespace) -> int:
    config = load_config(args)
    max_uses, ttl = _create_options(args, config)
    username = parse_name(args.username, config.domain) if args.username else None
    now = time.time()
    with Database.open(config.database_path) as db:
        inviter = _existing_user(db, args.contact, config) if args.contact else None
        if username and db.read(users.user_exists, username):
            raise UsageError(f"user {username}@{config.domain} already exists; an invite for that "
                             "name could never be used")
        invite = new_invite(CONTACT if inviter else ACCOUNT, inviter=inviter, now=now, username=username,
                            max_uses=max_uses, ttl=ttl, admin=args.admin)
        fingerprint = _fingerprint(config)
        uri, landing = printout.addresses(invite, config, fingerprint)
        _write_images(args, uri)  # before the invite exists: a bad path leaves nothing behind
        db.write_sync(store.insert_invite, invite)
    _print_invite(args, invite, uri, landing, now)
    return OK


def _create_options(args: argparse.Namespace, config: Config) -> tuple[int, float | None]:
    """(max_uses, seconds until it expires or None for never); UsageError on a bad combination."""
    if args.contact and (args.username or args.admin):
        raise UsageError("--contact makes a contact invite from an existing user; --username and "
                         "--admin are for account invites")
    if args.uses is not None and args.uses < 0:
        raise UsageError(f"--uses must be 0 (unlimited) or more, not {args.uses}")
    max_uses = 0 if args.unlimited else (1 if args.uses is None else args.uses)
    if args.expires is None:
        return max_uses, config.invites.expiry_days * 86400.0
    return max_uses, parse_duration(args.expires)


def parse_duration(text: str) -> float | None:
    """'7d', '12h', '30m', '90s' -> seconds; 'never' -> None. UsageError otherwise."""
    if text.strip().lower() == "never":
        return None
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"bad --expires {text!r}: give a positive number with a unit, e.g. 7d, 12h, "
                         "30m, 90s, or never")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _existing_user(db: Database, text: str, config: Config) -> str:
    name = parse_name(text, config.domain)
    if not db.read(users.user_exists, name):
        raise UsageError(f"no such user {name}@{config.domain} to invite from; see `appliance user list`")
    return name


def _fingerprint(config: Config) -> str:
    """The certificate's pin; the certificate is made as `serve` would make it if it is missing,
    so no URI ever goes out without a pin."""
    if not config.cert_path.exists():
        certs.ensure_certificate(config.cert_path, config.key_path, config.domain)
        print(f"created a self-signed certificate {config.cert_path}", file=sys.stderr)
    return certs.fingerprint_sha256(config.cert_path)


def _write_images(args: argparse.Namespace, uri: str) -> None:
    if args.png:
        args.png.write_bytes(qr.png(uri))
    if args.svg:
        args.svg.write_bytes(qr.svg(uri))


def _print_invite(args: argparse.Namespace, invite: Invite, uri: str, landing: str | None, now: float) -> None:
    if args.json:
        print(json.dumps(_as_json(invite, now, uri, landing)))
    else:
        print(printout.printout(invite, uri, landing, now, with_qr=not args.no_qr), end="")


def _as_json(invite: Invite, now: float, uri: str | None = None, landing: str | None = None) -> dict:
    described = {
        "token": invite.token, "kind": invite.kind, "inviter": invite.inviter,
        "username": invite.username, "admin": invite.admin, "uses": invite.uses,
        "max_uses": invite.max_uses, "expires": None if invite.expires is None else _iso(invite.expires),
        "state": invite.problem(now) or "usable",
    }
    if uri is not None:
        described |= {"uri": uri, "landing_url": landing}
    return described


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def run_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    now = time.time()
    with open_existing(config) as db:
        found = db.read(store.list_invites, now, args.all) if db is not None else []
    if args.json:
        print(json.dumps([_as_json(invite, now) for invite in found]))
    elif found:
        print(_table(found, now), end="")
    if not found:
        print(f"no {'' if args.all else 'usable '}invites; make one with `appliance invite create`",
              file=sys.stderr)
    return OK


def _table(found: list[Invite], now: float) -> str:
    rows = [("TOKEN", "KIND", "INVITER", "USERNAME", "USES", "EXPIRES", "STATE")]
    for invite in found:
        rows.append((invite.token[:PREFIX], invite.kind + ("/admin" if invite.admin else ""),
                     invite.inviter or "(admin)", invite.username or "-",
                     f"{invite.uses}/{invite.max_uses or 'unlimited'}",
                     "never" if invite.expires is None else printout.when(invite.expires),
                     invite.problem(now) or "usable"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n" for row in rows)


def run_show(args: argparse.Namespace) -> int:
    config = load_config(args)
    now = time.time()
    with open_existing(config) as db:
        invite = _find(db, args.token)
    if invite is None:
        return _unknown(args.token)
    problem = invite.problem(now)
    if problem is not None:
        print(f"invite {invite.token[:PREFIX]} cannot be used: {problem} ({printout.summary(invite, now)})",
              file=sys.stderr)
        return FAILED
    uri, landing = printout.addresses(invite, config, _fingerprint(config))
    _write_images(args, uri)
    _print_invite(args, invite, uri, landing, now)
    return OK


def run_revoke(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_existing(config) as db:
        invite = _find(db, args.token)
        if invite is None:
            return _unknown(args.token)
        db.write_sync(store.revoke, invite.token)
    already = " (it already was)" if invite.revoked else ""
    print(f"revoked invite {invite.token[:PREFIX]}{already}: {printout.kind(invite)}")
    return OK


def _find(db: Database | None, text: str) -> Invite | None:
    """The invite with this token, or the only one whose token starts with it."""
    if db is None:
        return None
    exact = db.read(store.get_invite, text)
    if exact is not None or len(text) < MIN_PREFIX:
        return exact
    matches = [i for i in db.read(store.list_invites, time.time(), True) if i.token.startswith(text)]
    if len(matches) > 1:
        raise UsageError(f"{text!r} is the start of {len(matches)} invites' tokens; give more characters")
    return matches[0] if matches else None


def _unknown(token: str) -> int:
    print(f"no invite {token!r}; see `appliance invite list --all`", file=sys.stderr)
    return FAILED
