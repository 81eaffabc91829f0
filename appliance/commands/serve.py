"""`appliance serve`: run the appliance in the foreground; on a database without any account,
print the first-start administrator invite once the listeners are up (pairing/first_start.py)."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from appliance import app
from appliance.commands import load_config
from appliance.config import Config
from appliance.net import certs, sdnotify
from appliance.net.listeners import ListenError
from appliance.pairing import first_start


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("serve", parents=[parent], help="run the XMPP server")
    parser.add_argument("--log-level", help="DEBUG, INFO (default), WARNING")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    level = (args.log_level or config.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    refused: list[BaseException] = []
    try:
        trio.run(_serve, config)
    except* ListenError as failed:  # a port in use, or not ours to open: one line, not a traceback
        refused += failed.exceptions
    for error in refused:
        print(f"appliance serve: {error}", file=sys.stderr)
    return 1 if refused else 0


async def _serve(config: Config) -> None:
    await app.run(config, when_serving=lambda running: _announce_then_ready(config, running))


async def _announce_then_ready(config: Config, running: app.Running) -> None:
    """Under systemd (the image's Type=notify unit): ready once every listener accepts and the
    first-start invite is out (units ordered after this one, e.g. a console login prompt, come after
    it), then the watchdog petted from this event loop until the server stops. A task of the
    server's nursery: a stop during the invite's write waits for it before the database closes."""
    await first_start.announce(running.server, certs.fingerprint_sha256(config.cert_path))
    sdnotify.notify(f"READY=1\nSTATUS=serving {config.domain}")
    if (interval := sdnotify.watchdog_interval()) is not None:
        await sdnotify.pet_watchdog(interval, running.stop)
