"""The web server: the starlette app of appliance/web on plain HTTP and HTTPS, inside our own nursery.

hypercorn's trio worker serves the app in the appliance's process (docs/architecture.md, "HTTP").
We open the listening sockets ourselves, as the XMPP listeners do (net/listeners.py), and hand
them to hypercorn's `worker_serve` (what `hypercorn.trio.serve` calls): hypercorn's own binding
knows nothing of IPV6_V6ONLY, so the default `listen = ["0.0.0.0", "::"]` would fail on the
second address, and it gives up when one address cannot be bound (a box without IPv6) where the
XMPP listeners go on.

HTTPS uses the XMPP server's certificate, in a context of its own that offers only http/1.1 by
ALPN: the XMPP context offers "xmpp-client", and HTTP/2 would only add per-connection memory for
a few small pages. The server stops when the appliance cancels its nursery; nothing here waits.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig, Sockets
from hypercorn.logging import Logger as HypercornLogger
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from appliance.config import Config, Http
from appliance.core.server import Server
from appliance.net.listeners import open_listeners
from appliance.web.app import build_app

log = logging.getLogger("appliance.http")
_INVITE_TOKEN = re.compile(r"(/invite/[^/]{1,4})[^/]*")


def https_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.load_cert_chain(cert_path, key_path)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Log(HypercornLogger):
    """hypercorn's messages through our logger: warnings and errors as they come, its chatter
    ("Running on ...") and one line per request at DEBUG only, so a normal log stays quiet."""

    async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        log.debug(message, *args, **kwargs)

    async def access(self, request: Any, response: Any, request_time: float) -> None:
        status = response["status"] if response else "-"
        # An invite's token is a secret: logs show its first four characters only (docs/pairing.md).
        path = _INVITE_TOKEN.sub(r"\1...", request["path"])
        log.debug("%s %s %s (%.1f ms)", request.get("method", "WEBSOCKET"), path, status, request_time * 1000)


def _hypercorn_config(context: ssl.SSLContext | None, limits: Http) -> HypercornConfig:
    config = HypercornConfig()
    config.h11_max_incomplete_size = limits.max_header_bytes
    config.keep_alive_timeout = limits.idle_timeout
    config.read_timeout = limits.read_timeout
    config.logger_class = _Log
    config.errorlog = log
    config.accesslog = None
    config.include_server_header = False
    # worker_serve asks the config for the TLS context of the secure sockets: ours.
    config.create_ssl_context = lambda: context  # type: ignore[method-assign]
    return config


async def _open_sockets(hosts: list[str], port: int) -> list[socket.socket]:
    """Listening sockets as hypercorn wants them: plain Python sockets, taken out of trio's."""
    listeners = await open_listeners(hosts, port, "web pages")
    return [socket.socket(fileno=listener.socket.detach()) for listener in listeners]


def _ports(sockets: list[socket.socket]) -> list[int]:
    return sorted({s.getsockname()[1] for s in sockets})


async def serve_http(server: Server, config: Config, tls_context: ssl.SSLContext | None, *,
                     task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; started() with the ports (plain, then TLS) once they listen.
    `tls_context`: the HTTPS context (`https_context`), or None for plain HTTP only."""
    plain = await _open_sockets(config.listen, config.http.port)
    secure = await _open_sockets(config.listen, config.http.tls_port) if tls_context and config.http.tls_port else []
    app = wrap_app(build_app(server, config), 0, "asgi")  # 0: the WSGI body limit, unused for ASGI
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda **kw: worker_serve(app, _hypercorn_config(tls_context, config.http),
                                                      sockets=Sockets(secure, plain, []), **kw))
        log.info("web pages on port %s (HTTP)%s", _ports(plain),
                 f" and {_ports(secure)} (HTTPS)" if secure else "")
        task_status.started(_ports(plain) + _ports(secure))
