"""The client library's connection (appliance/client/stream.py) against the real server: real TLS
(verified against the server's certificate, or pinned), SCRAM, binding, XEP-0198 resumption."""

from __future__ import annotations

import signal
from dataclasses import replace

import pytest
import trio
from lxml import etree

from appliance.client.stream import (Account, AuthRefused, ClientStream, LinkLost, PinMismatch, StanzaRefused,
                                     connect)
from appliance.net import certs
from appliance.pairing.invites import normalise_fingerprint
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


async def test_two_clients_chat_both_ways_and_query_the_roster(server: ServerProcess) -> None:
    server.add_user("ed")
    server.add_user("flo")
    ed, flo = await login(server, "ed"), await login(server, "flo")
    await ed.send(chat(f"flo@{server.domain}", "hello flo"))
    got = await next_message(flo)
    assert got.findtext(f"{{{ns.CLIENT}}}body") == "hello flo" and got.get("from") == ed.jid
    await flo.send(chat(f"ed@{server.domain}", "hi ed"))
    assert (await next_message(ed)).findtext(f"{{{ns.CLIENT}}}body") == "hi ed"
    # iq() while another task sits in receive(): the reader hands the result over.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flo.receive)
        query = make("iq", type_="get")
        sub(query, f"{{{ns.ROSTER}}}query")
        result = await flo.iq(query, timeout=10)
        nursery.cancel_scope.cancel()
    assert result.get("type") == "result" and result.find(f"{{{ns.ROSTER}}}query") is not None
    await flo.heartbeat(5)  # the ack request is answered after all that
    await ed.aclose()
    await flo.aclose()


async def test_a_closed_stream_confirms_what_it_received(server: ServerProcess) -> None:
    """aclose() acknowledges first: a message the server never saw acknowledged is routed again when
    the session ends (offline storage), so the next login would get it a second time."""
    server.add_user("pia")
    server.add_user("quinn")
    pia, quinn = await login(server, "pia"), await login(server, "quinn")
    await pia.send(chat(f"quinn@{server.domain}", "once only"))
    assert (await next_message(quinn)).findtext(f"{{{ns.CLIENT}}}body") == "once only"
    await quinn.aclose()
    quinn = await login(server, "quinn")
    await quinn.heartbeat(5)  # its presence (which flushes offline storage) has been handled
    await pia.send(chat(f"quinn@{server.domain}", "after"))
    assert (await next_message(quinn)).findtext(f"{{{ns.CLIENT}}}body") == "after"
    await pia.aclose()
    await quinn.aclose()


async def test_iq_error_is_raised_with_its_condition(server: ServerProcess) -> None:
    server.add_user("gil")
    gil = await login(server, "gil")
    bogus = make("iq", to=server.domain, type_="get")
    sub(bogus, "{urn:example:nothing}query")
    with pytest.raises(StanzaRefused) as refused:
        await gil.iq(bogus, timeout=10)
    assert refused.value.condition == "service-unavailable"
    await gil.aclose()


async def test_wrong_password_is_not_authorized(server: ServerProcess) -> None:
    server.add_user("hal")
    with pytest.raises(AuthRefused) as refused:
        await connect(account(server, "hal", "wrong"), cafile=str(server.cert), timeout=10)
    assert refused.value.condition == "not-authorized"


async def test_pinned_certificate_connects_and_a_wrong_pin_is_refused(server: ServerProcess) -> None:
    server.add_user("ivy")
    pin = normalise_fingerprint(certs.fingerprint_sha256(server.cert))
    pinned = replace(account(server, "ivy"), fingerprint=pin)
    stream = await connect(pinned, timeout=10)  # no cafile: the pin alone is trusted
    await stream.aclose()
    wrong = pin[:-1] + ("0" if pin[-1] != "0" else "1")
    with pytest.raises(PinMismatch):
        await connect(replace(pinned, fingerprint=wrong), timeout=10)
    with pytest.raises(LinkLost):  # no pin: the self-signed certificate is not trusted by the system
        await connect(account(server, "ivy"), timeout=10)


async def test_message_to_a_lost_link_arrives_after_resumption(server: ServerProcess) -> None:
    server.add_user("jo")
    server.add_user("kim")
    jo, kim = await login(server, "jo"), await login(server, "kim")
    await jo.heartbeat(5)
    old_sm = jo.sm
    await jo.abort()  # the socket closes without </stream:stream>: the server keeps the session
    await kim.send(chat(jo.jid, "while you were away"))
    await kim.heartbeat(5)  # the server has the message
    jo = await connect(account(server, "jo"), resume=old_sm, cafile=str(server.cert), timeout=10)
    assert jo.resumed and jo.jid == old_sm.jid and jo.lost == []
    got = await next_message(jo)
    assert got.findtext(f"{{{ns.CLIENT}}}body") == "while you were away"
    await jo.heartbeat(5)
    await jo.aclose()
    await kim.aclose()


async def test_resumption_after_a_server_restart_fails_and_binds_anew(fresh_server: ServerProcess) -> None:
    server = fresh_server.start()
    server.add_user("lou")
    lou = await login(server, "lou")
    await lou.heartbeat(5)
    await lou.send(chat(f"lou@{server.domain}", "not acknowledged"))
    old_sm = lou.sm
    await lou.abort()
    server.stop()
    server.start()
    lou = await connect(account(server, "lou"), resume=old_sm, cafile=str(server.cert), timeout=10)
    assert not lou.resumed and lou.sm.id and lou.sm.id != old_sm.id
    assert lou.jid.startswith(f"lou@{server.domain}/")
    assert [b"not acknowledged" in data for data in lou.lost] == [True]  # to send again
    await lou.heartbeat(5)
    await lou.aclose()


async def test_heartbeat_without_answer_loses_the_link(server: ServerProcess) -> None:
    server.add_user("max")
    stream = await login(server, "max")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)  # the server hears nothing and says nothing
    try:
        with pytest.raises(LinkLost, match="no answer"):
            await stream.heartbeat(1)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    with pytest.raises(LinkLost), trio.fail_after(5):  # the connection is closed for good
        while True:
            await stream.receive()  # (stanzas read before, e.g. our own presence, come out first)


async def test_server_pings_and_ack_requests_are_answered(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"keepalive.ping_interval": 0.5, "keepalive.ping_timeout": 1.0,
                             "stream_management.request_after": 1}
    server = fresh_server.start()
    server.add_user("ned")
    server.add_user("ola")
    ned, ola = await login(server, "ned"), await login(server, "ola")
    async def drain(stream: ClientStream) -> None:
        while True:
            await stream.receive()

    with trio.move_on_after(4):  # silent but reading: the server's pings are answered meanwhile
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, ned)
            nursery.start_soon(drain, ola)
    await ola.send(chat(ned.jid, "still there?"))
    assert (await next_message(ned)).findtext(f"{{{ns.CLIENT}}}body") == "still there?"
    await ned.heartbeat(5)
    assert "no answer to ping" not in server.log_text()
    assert "handled-count-too-high" not in server.log_text()  # our <a h=.../> were right
    await ned.aclose()
    await ola.aclose()
