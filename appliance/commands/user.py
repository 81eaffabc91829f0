"""`appliance user add|passwd|del|list`: manage accounts, also while the server is running.

The server may hold the same database open; WAL and the busy timeout let both processes share it.
`del` goes through the running server when one answers on this machine (commands/local_api.py),
so that the account's open sessions are closed too; without one, it works on the database alone.
A password never appears as a plain argument (visible in `ps`): it comes from --password-file, from
stdin when stdin is not a terminal, or from a twice-typed prompt.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sqlite3
import sys
from pathlib import Path
from typing import Callable, ContextManager
from urllib.parse import quote

from scramp import ScramException

from appliance.commands import load_config
from appliance.commands.local_api import LocalApi, ServerUnreachable
from appliance.config import Config
from appliance.proto.jid import InvalidJID, normalise_domain, normalise_local
from appliance.store import users
from appliance.store.db import Database
from appliance.store.schema import SchemaTooNew

OK, FAILED, USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user; the message says what to change. Exit code 2."""


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("user", help="add, remove and list accounts")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    secret = _password_options()
    add = actions.add_parser("add", parents=[parent, secret], help="create an account")
    add.add_argument("name", help="localpart, or local@domain on the configured domain")
    add.set_defaults(run=guarded(run_add))
    passwd = actions.add_parser("passwd", parents=[parent, secret], help="change a password")
    passwd.add_argument("name")
    passwd.set_defaults(run=guarded(run_passwd))
    delete = actions.add_parser("del", parents=[parent], help="delete an account and all its data")
    delete.add_argument("name")
    delete.set_defaults(run=guarded(run_del))
    listing = actions.add_parser("list", parents=[parent], help="print every account's JID")
    listing.set_defaults(run=guarded(run_list))


def _password_options() -> argparse.ArgumentParser:
    secret = argparse.ArgumentParser(add_help=False)
    secret.add_argument("--password-file", type=Path, metavar="FILE",
                        help="read the password from the first line of FILE")
    secret.add_argument("--password", help=argparse.SUPPRESS)  # visible in `ps`; warned about
    return secret


def guarded(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the expected failures into one clear line on stderr and an exit code (also for
    `appliance invite`: the line names the command and action that failed)."""
    def run(args: argparse.Namespace) -> int:
        where = f"appliance {args.command} {args.action}"
        try:
            return action(args)
        except UsageError as exc:
            print(f"{where}: {exc}", file=sys.stderr)
            return USAGE
        except (SchemaTooNew, sqlite3.Error) as exc:
            print(f"{where}: database error: {exc}", file=sys.stderr)
            return FAILED
        except OSError as exc:  # a file that cannot be written or read: say so, no traceback
            print(f"{where}: {exc}", file=sys.stderr)
            return FAILED
    return run


def run_add(args: argparse.Namespace) -> int:
    config = load_config(args)
    name = parse_name(args.name, config.domain)
    jid = f"{name}@{config.domain}"
    with Database.open(config.database_path) as db:
        if db.read(users.user_exists, name):  # before prompting: do not ask for a useless password
            return _exists(jid, name)
        credentials = _credentials(args, config)  # PBKDF2 outside the write transaction
        try:
            db.write_sync(users.insert_user, name, credentials)
        except users.UserExists:
            return _exists(jid, name)
    print(f"created user {jid}")
    return OK


def run_passwd(args: argparse.Namespace) -> int:
    config = load_config(args)
    name = parse_name(args.name, config.domain)
    jid = f"{name}@{config.domain}"
    with open_existing(config) as db:
        if db is None or not db.read(users.user_exists, name):
            return _missing(jid)
        credentials = _credentials(args, config)
        if not db.write_sync(users.store_credentials, name, credentials):
            return _missing(jid)
    print(f"changed the password of {jid}")
    return OK


def run_del(args: argparse.Namespace) -> int:
    """Through the running server when there is one (it closes the account's open sessions),
    else on the database alone."""
    config = load_config(args)
    name = parse_name(args.name, config.domain)
    jid = f"{name}@{config.domain}"
    removed = _remove_through_server(config, name)
    if removed is None:
        with open_existing(config) as db:
            removed = db is not None and db.write_sync(users.delete_user, name)
    if not removed:
        return _missing(jid)
    print(f"deleted user {jid} with its roster and offline messages")
    return OK


def _remove_through_server(config: Config, name: str) -> bool | None:
    """True if the running server removed the account, False if it has no such account, None if
    no server answers for this data directory (or it cannot be asked: the web server is off, and
    then any open sessions of the account stay until they end; the warning says so)."""
    try:
        status, answer = LocalApi.for_config(config).call("DELETE", f"/api/v1/users/{quote(name, safe='')}")
    except ServerUnreachable:  # not running (no key file, nothing answers), or the web server is off
        if not config.http.enabled:
            print("note: with the web server off ([http] enabled = false) a running server is not told: "
                  "the account's open sessions stay until they disconnect", file=sys.stderr)
        return None
    if status in (204, 404):
        return status == 204
    raise OSError(f"the running server refused: {answer.get('reason', f'HTTP {status}')}")


def run_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_existing(config) as db:
        names = db.read(users.list_users) if db is not None else []
    for name in names:
        print(f"{name}@{config.domain}")
    if not names:
        print(f"no users in {config.database_path}; add one with `appliance user add NAME`",
              file=sys.stderr)
    return OK


def parse_name(text: str, domain: str) -> str:
    """NAME or NAME@DOMAIN -> the normalised localpart; UsageError says what is wrong."""
    local, at, given_domain = text.rpartition("@")
    if not at:
        local = text
    elif not _same_domain(given_domain, domain):
        raise UsageError(
            f"{text} is not on this server's domain {domain}; use a bare name or NAME@{domain}"
            " (or pass --domain)"
        )
    try:
        return normalise_local(local)
    except InvalidJID as exc:
        raise UsageError(f"invalid user name {local!r}: {exc}") from None


def _same_domain(given: str, domain: str) -> bool:
    try:
        return normalise_domain(given) == normalise_domain(domain)
    except InvalidJID:
        return False


def _exists(jid: str, name: str) -> int:
    print(f"user {jid} already exists; to change its password use `appliance user passwd {name}`",
          file=sys.stderr)
    return FAILED


def _missing(jid: str) -> int:
    print(f"no such user {jid}; see `appliance user list`", file=sys.stderr)
    return FAILED


def open_existing(config: Config) -> ContextManager[Database | None]:
    """`with open_existing(config) as db`: db is None when there is no database file yet."""
    # Do not create a database (and its directory) just to find it empty: a mistyped --data
    # should not leave a fresh data directory behind.
    if not config.database_path.exists():
        return contextlib.nullcontext(None)
    return Database.open(config.database_path)


def _credentials(args: argparse.Namespace, config: Config) -> users.Credentials:
    password = read_password(args)
    try:
        return users.make_credentials(password, config.scram_iterations)
    except ScramException as exc:
        raise UsageError(f"password not allowed: {exc}") from None


def read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        print("warning: --password is visible to other users in `ps`; prefer --password-file "
              "or stdin", file=sys.stderr)
        password = args.password
    elif args.password_file is not None:
        password = _first_line_of(args.password_file)
    elif not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = _prompt_twice()
    if not password:
        raise UsageError("the password must not be empty")
    return password


def _first_line_of(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the password file: {exc}") from None


def _prompt_twice() -> str:
    try:
        first = getpass.getpass("New password: ")
        again = getpass.getpass("Repeat password: ")
    except EOFError:
        raise UsageError("no password given; nothing changed") from None
    if again != first:
        raise UsageError("the passwords do not match; nothing changed")
    return first
