"""slixmpp clients for integration tests: real client library, real sockets, real TLS.

slixmpp is asyncio-based, so these tests are plain sync tests that call `run(coro)`.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Awaitable, TypeVar

import slixmpp

from tests.harness import PASSWORD, ServerProcess

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that trusts the test server's self-signed certificate and queues what it gets."""

    def __init__(self, server: ServerProcess, jid: str, password: str = PASSWORD, *,
                 direct_tls: bool = False, plugins: tuple[str, ...] = ("xep_0030", "xep_0199", "xep_0092")) -> None:
        super().__init__(jid, password)
        self.appliance = server
        self.direct_tls = direct_tls
        self.ssl_context = ssl.create_default_context(cafile=str(server.cert))
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        for plugin in plugins:
            self.register_plugin(plugin)
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.presences: asyncio.Queue[Any] = asyncio.Queue()
        self.subscriptions: asyncio.Queue[Any] = asyncio.Queue()
        self.stream_errors: list[Any] = []
        self.auth_failures: list[str] = []  # SASL failure conditions, in order
        # slixmpp replaces its `disconnected` future once it fires, so awaiting it late would hang.
        self.gone = asyncio.Event()
        self.add_event_handler("failed_auth", lambda stanza: self.auth_failures.append(stanza["condition"]))
        self.add_event_handler("disconnected", lambda _: self.gone.set())
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("presence_available", self.presences.put_nowait)
        self.add_event_handler("presence_unavailable", self.presences.put_nowait)
        self.add_event_handler("presence_subscribe", self.subscriptions.put_nowait)
        self.add_event_handler("stream_error", self.stream_errors.append)

    async def login(self, *, send_presence: bool = True, get_roster: bool = True, timeout: float = 15) -> None:
        started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
        self.add_event_handler("failed_all_auth", lambda _: started.done() or started.set_result(False))
        port = self.appliance.tls_port if self.direct_tls else self.appliance.port
        self.connect("127.0.0.1", port)
        if not await asyncio.wait_for(started, timeout):
            raise PermissionError("authentication failed")
        if get_roster:
            await self.get_roster()
        if send_presence:
            self.send_presence()

    async def logout(self) -> None:
        self.disconnect()
        await self.disconnected

    async def next_message(self, timeout: float = 10) -> Any:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def next_presence(self, timeout: float = 10) -> Any:
        return await asyncio.wait_for(self.presences.get(), timeout)


async def connected(server: ServerProcess, jid: str, **kwargs: Any) -> Client:
    client = Client(server, jid, **{k: v for k, v in kwargs.items() if k in ("password", "direct_tls", "plugins")})
    await client.login(**{k: v for k, v in kwargs.items() if k in ("send_presence", "get_roster")})
    return client
