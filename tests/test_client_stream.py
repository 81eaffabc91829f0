"""The client library's connection (appliance/client/stream.py) against the real server: real TLS
(verified against the server's certificate, or pinned), SCRAM, binding, XEP-0198 resumption."""

from __future__ import annotations

import trio
from lxml import etree

from appliance.client.stream import Account, ClientStream, connect
from appliance.proto import ns
from appliance.proto.stanza import make, sub
from tests.harness import PASSWORD, ServerProcess


def account(server: ServerProcess, name: str, password: str = PASSWORD) -> Account:
    return Account(f"{name}@{server.domain}", password, server.host, server.port, None)


async def login(server: ServerProcess, name: str, **options: object) -> ClientStream:
    stream = await connect(account(server, name), cafile=str(server.cert), timeout=10, **options)
    await stream.send(make("presence"))
    return stream


async def next_message(stream: ClientStream, timeout: float = 10) -> etree._Element:
    with trio.fail_after(timeout):
        while True:
            stanza = await stream.receive()
            if etree.QName(stanza).localname == "message":
                return stanza


def chat(to: str, body: str) -> etree._Element:
    message = make("message", to=to, type_="chat")
    sub(message, f"{{{ns.CLIENT}}}body", body)
    return message


async def test_login_binds_resource_and_enables_stream_management(server: ServerProcess) -> None:
    server.add_user("cora")
    stream = await login(server, "cora")
    assert stream.jid == f"cora@{server.domain}/appliance-client"
    assert stream.sm.id and not stream.resumed
    await stream.heartbeat(5)
    await stream.aclose()
