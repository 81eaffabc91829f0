"""Stopping the whole appliance (app.run) while work that writes to the database is under way: the
work finishes or is cancelled, but the database is never closed under a write it began."""

from __future__ import annotations

from pathlib import Path

import trio

from appliance import app
from appliance.config import Config
from appliance.net import certs
from appliance.pairing import first_start
from appliance.store import invites, users
from appliance.store.db import Database


def _quiet_config(data_dir: Path) -> Config:
    """Loopback, ports the system picks, no web pages, no mDNS, no components."""
    config = Config(domain="stop.test", data_dir=data_dir, listen=["127.0.0.1"], c2s_port=0, c2s_tls_port=0,
                    scram_iterations=4096)
    config.http.enabled = False
    config.mdns.enabled = False
    config.components.port = 0
    return config


async def test_a_stop_during_the_first_start_invite_lets_its_write_land(tmp_path: Path) -> None:
    """What `appliance serve` does when a SIGTERM comes as the listeners open (CI saw the database
    closed under the invite's write, and exit status 1): the stop comes first, the write after."""
    config = _quiet_config(tmp_path)

    async def stop_then_announce(running: app.Running) -> None:
        running.stop.set()
        await first_start.announce(running.server, certs.fingerprint_sha256(config.cert_path))

    with trio.fail_after(20):
        await app.run(config, handle_signals=False, when_serving=stop_then_announce)
    with Database.open(config.database_path) as db:
        assert [invite.admin for invite in db.read(invites.list_invites, 0.0)] == [True]


async def test_when_serving_runs_once_the_listeners_accept_and_stops_with_the_server(tmp_path: Path) -> None:
    config = _quiet_config(tmp_path)
    seen: list[str] = []

    async def connect_write_and_wait(running: app.Running) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", running.c2s_ports[0])
        await stream.aclose()
        seen.append("connected")
        await running.server.db.write(users.create_user, "early", "pw", 4096)
        running.stop.set()
        await trio.sleep_forever()  # cancelled by the stop

    with trio.fail_after(20):
        await app.run(config, handle_signals=False, when_serving=connect_write_and_wait)
    assert seen == ["connected"]
    with Database.open(config.database_path) as db:
        assert db.read(users.user_exists, "early")
