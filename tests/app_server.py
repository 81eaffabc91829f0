"""A small XEP-0357 app server for tests, written with slixmpp's ComponentXMPP (XEP-0114): it
records the pubsub publish IQs the appliance sends it and answers them (a result, or an error
condition a test chooses), and queues the messages it gets."""

from __future__ import annotations

import asyncio
from typing import Any

import slixmpp
from slixmpp.exceptions import XMPPError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.harness import DOMAIN, ServerProcess, free_port, wait_for_port

APP = f"push.{DOMAIN}"
SECRET = "s3cret-for-the-app-server"
PUBSUB = "http://jabber.org/protocol/pubsub"
PUSH = "urn:xmpp:push:0"
DATA = "jabber:x:data"


def component_server(data: Any, **settings: object) -> ServerProcess:
    """A started appliance with APP configured as a component (port in `.component_port`)."""
    port = free_port()
    proc = ServerProcess(data, settings={"components.port": port, "components.secrets": [f"{APP}={SECRET}"],
                                         **settings})
    proc.start()
    assert proc.proc is not None
    wait_for_port(port, proc.proc)
    proc.component_port = port  # type: ignore[attr-defined]
    return proc


class AppServer(slixmpp.ComponentXMPP):
    def __init__(self, server: ServerProcess, *, secret: str = SECRET, error: str | None = None) -> None:
        super().__init__(APP, secret, "127.0.0.1", server.component_port)  # type: ignore[attr-defined]
        self.error = error  # answer publishes with this stanza error condition instead of a result
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.iqs: asyncio.Queue[Any] = asyncio.Queue()
        self.stream_errors: list[Any] = []
        self.started = asyncio.get_event_loop().create_future()
        self.gone = asyncio.Event()
        self.register_handler(Callback("push publish", MatchXPath(f"{{{self.default_ns}}}iq/{{{PUBSUB}}}pubsub"),
                                       self._publish))
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("session_start", lambda _: self.started.done() or self.started.set_result(True))
        self.add_event_handler("stream_error", self.stream_errors.append)
        self.add_event_handler("disconnected", lambda _: self.gone.set())

    async def start(self, timeout: float = 10) -> AppServer:
        self.connect()
        await asyncio.wait_for(self.started, timeout)
        return self

    def _publish(self, iq: Any) -> None:
        self.pushes.put_nowait(parse_publish(iq.xml, iq["from"].full, iq["id"]))
        if self.error is not None:
            raise XMPPError(self.error)
        iq.reply().send()

    async def next_push(self, timeout: float = 10) -> dict[str, Any]:
        return await asyncio.wait_for(self.pushes.get(), timeout)


def parse_publish(iq: Any, sender: str, iq_id: str) -> dict[str, Any]:
    """The parts of a publish IQ a test checks: node, summary fields, publish-options fields."""
    publish = iq.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
    summary = iq.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item/{{{PUSH}}}notification/{{{DATA}}}x")
    options = iq.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish-options/{{{DATA}}}x")
    return {"from": sender, "id": iq_id, "node": publish.get("node") if publish is not None else None,
            "summary": _fields(summary), "options": _fields(options)}


def _fields(x: Any) -> dict[str, str]:
    if x is None:
        return {}
    return {f.get("var"): (f.findtext(f"{{{DATA}}}value") or "") for f in x.iter(f"{{{DATA}}}field")}
