"""Sub-commands. Each module has `register(subparsers, parent)` that sets `run` on its parser."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance import config as config_module
from appliance.config import Config


def common_options() -> argparse.ArgumentParser:
    """Options every sub-command understands, so `appliance user list --data DIR` works."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", type=Path, help="TOML configuration file")
    parent.add_argument("--data", type=Path, dest="data_dir", help="data directory (default ./data)")
    parent.add_argument("--domain", help="XMPP domain served (default <hostname>.local)")
    return parent


def load_config(args: argparse.Namespace) -> Config:
    return config_module.load(args.config, data_dir=args.data_dir, domain=args.domain)


from appliance.commands import apikey, chat, configcmd, discover, group, invite, notify, pair, routes, serve, user  # noqa: E402  (imported statically for PyInstaller)

COMMANDS = [serve, user, invite, group, apikey, notify, routes, configcmd, discover, pair, chat]
