"""`appliance` command line: one sub-command per module in appliance.commands."""

from __future__ import annotations

import argparse
import sys

from appliance import __version__
from appliance.commands import COMMANDS, common_options
from appliance.config import ConfigError


def version() -> str:
    """`appliance 0.1.0`; a binary adds its release id, from the module scripts/build-binary.sh
    writes into its copy of the source (the repository has none)."""
    try:
        from appliance._release import RELEASE
    except ImportError:
        return f"appliance {__version__}"
    return f"appliance {__version__} ({RELEASE})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="XMPP chat appliance")
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = common_options()
    for command in COMMANDS:
        command.register(sub, parent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:
        print(f"appliance: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
