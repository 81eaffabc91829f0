"""`appliance serve`: run the appliance in the foreground."""

from __future__ import annotations

import argparse
import logging

import trio

from appliance import app
from appliance.commands import load_config


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("serve", parents=[parent], help="run the XMPP server")
    parser.add_argument("--log-level", help="DEBUG, INFO (default), WARNING")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    level = (args.log_level or config.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trio.run(app.run, config)
    return 0
