"""Wiring: one root nursery that starts every shell, and a graceful stop on SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from appliance import features
from appliance.config import Config
from appliance.core.server import Server
from appliance.net import certs, component, http, mdns, sdnotify
from appliance.net.c2s import C2SService
from appliance.pairing import links
from appliance.store.db import Database
from appliance.web.local_key import write_local_key

log = logging.getLogger("appliance")


@dataclass
class Running:
    server: Server
    c2s_ports: list[int]
    c2s_tls_ports: list[int]
    stop: trio.Event


def build_server(config: Config, db: Database) -> Server:
    server = Server(config, db)
    features.setup_all(server)
    server.table.freeze()
    return server


async def run(config: Config, *, handle_signals: bool = True,
              when_serving: Callable[[Running], Awaitable[None]] | None = None,
              task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until `stop` is set (SIGTERM/SIGINT when handle_signals). `when_serving` runs once every
    listener is up, as a task of the server's own nursery: a stop cancels it and waits for it (a
    write it began still commits) before the database closes under it."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if certs.ensure_certificate(config.cert_path, config.key_path, config.domain):
        log.info("created a self-signed certificate %s (SHA-256 %s)", config.cert_path,
                 certs.fingerprint_sha256(config.cert_path))
    db = Database.open(config.database_path, commit_delay=config.storage.commit_delay_ms / 1000)
    try:
        server = build_server(config, db)
        tls = certs.server_context(config.cert_path, config.key_path)
        binding = ("tls-server-end-point", certs.tls_server_end_point(config.cert_path))
        service = C2SService(server, tls, binding)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            service.hibernation.nursery = nursery
            if handle_signals:  # first: a SIGTERM while the listeners open is a clean stop, not a kill
                await nursery.start(_stop_on_signal, stop)
                nursery.start_soon(_stats_on_signal, server)
            ports = await nursery.start(lambda **kw: service.listen(config.c2s_port, direct_tls=False, **kw))
            tls_ports = await nursery.start(lambda **kw: service.listen(config.c2s_tls_port, direct_tls=True, **kw))
            if (components := component.service_for(server)) is not None:  # XEP-0114 app servers
                await nursery.start(components.listen)
            if config.http.enabled:
                write_local_key(db, config.data_dir)  # for `appliance notify` on this machine
                web_tls = http.https_context(config.cert_path, config.key_path) if config.http.tls_port else None
                await nursery.start(http.serve_http, server, config, web_tls)
                log.info("invite pages at %s/invite/...", links.http_base(config))
            if config.mdns.enabled:  # after every listener: a client that hears it connects at once
                http_url = links.http_base(config) if config.http.enabled else None
                nursery.start_soon(mdns.announce, config, ports[0], tls_ports[0],
                                   certs.fingerprint_sha256(config.cert_path), http_url)
            log.info("serving %s (database %s)", config.domain, config.database_path)
            running = Running(server, ports, tls_ports, stop)
            if when_serving is not None:
                nursery.start_soon(when_serving, running)
            task_status.started(running)
            await stop.wait()
            log.info("shutting down: closing %d sessions", len(server.sessions))
            sdnotify.notify("STOPPING=1")
            await service.shutdown()
            nursery.cancel_scope.cancel()
    finally:
        await db.aclose()
        log.info("stopped; database closed cleanly")


def stats(server: Server) -> dict[str, int]:
    """Counters that the operating system cannot see, for benchmarks and operators."""
    return {"db_commits": server.db.commits, "db_writes": server.db.writes, "sessions": len(server.sessions)}


async def _stats_on_signal(server: Server) -> None:
    """SIGUSR1 logs one line `stats {json}`: `kill -USR1 PID` from a benchmark or a shell."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            log.info("stats %s", json.dumps(stats(server), sort_keys=True))


async def _stop_on_signal(stop: trio.Event, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            stop.set()
            return
