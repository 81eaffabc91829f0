"""`appliance pair URI` / `appliance pair --qr FILE.png`: make this machine a chat client of an
appliance through an invite (docs/client.md, "The terminal client").

Pairs with appliance/client/pairing.py (through invite.pair_with_keys, which also trusts the
inviter's device keys a contact invite names): the certificate is pinned to the invite's fingerprint, the
account (with a random password) is stored in the client's data directory, which `appliance chat`
then uses. The host defaults to the invite's domain; `appliance discover` lists the appliances on
the local network when that name does not resolve.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from appliance.client.pairing import PairingFailed
from appliance.client.qr_image import NoQrCode, read_qr
from appliance.client.invite import pair_with_keys
from appliance.client.state import ClientState

OK, FAILED, USAGE = 0, 1, 2


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/appliance-client`, else `~/.local/share/appliance-client`."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "appliance-client"


def data_dir_option() -> argparse.ArgumentParser:
    """`--data-dir`, shared with `appliance chat`."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="the client's data (default $XDG_DATA_HOME/appliance-client)")
    return parent


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("pair", parents=[data_dir_option()],
                            help="pair this machine as a chat client through an invite (URI or QR image)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("uri", nargs="?", help="the invite URI (xmpp:...?register;preauth=...)")
    source.add_argument("--qr", type=Path, metavar="FILE", help="read the invite from a QR code image")
    parser.add_argument("--host", help="the appliance's address (default: the invite's domain; "
                                       "`appliance discover` lists appliances on this network)")
    parser.add_argument("--port", type=int, default=5222, help="its XMPP client port (default 5222)")
    parser.add_argument("--username", metavar="NAME", help="your user name, if the invite presets none")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S", help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        print(f"appliance pair: --port must be 1..65535, not {args.port}", file=sys.stderr)
        return USAGE
    data_dir = args.data_dir or default_data_dir()
    try:
        uri = read_qr(args.qr) if args.qr else args.uri
        account = trio.run(_pair, uri, data_dir, args)
    except NoQrCode as exc:
        print(f"appliance pair: {exc}", file=sys.stderr)
        return FAILED
    except PairingFailed as exc:
        print(f"appliance pair: {exc}", file=sys.stderr)
        return FAILED
    except OSError as exc:  # the data directory cannot be made or written
        print(f"appliance pair: {exc}", file=sys.stderr)
        return FAILED
    print(f"paired: {account.jid}")
    print(f"data: {data_dir}")
    return OK


async def _pair(uri: str, data_dir: Path, args: argparse.Namespace):
    return await pair_with_keys(uri, ClientState(data_dir), host=args.host, port=args.port,
                      username=args.username, timeout=args.timeout)
