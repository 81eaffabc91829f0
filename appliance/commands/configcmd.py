"""`appliance config show`: print the effective configuration as TOML."""

from __future__ import annotations

import argparse

from appliance import config as config_module
from appliance.commands import load_config


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("config", help="show the effective configuration")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", parents=[parent], help="print the effective configuration as TOML")
    show.set_defaults(run=run_show)


def run_show(args: argparse.Namespace) -> int:
    print(config_module.to_toml(load_config(args)), end="")
    return 0
