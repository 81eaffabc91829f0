"""XEP-0357 push through a real app server (tests/app_server.py, slixmpp's ComponentXMPP over
XEP-0114): enable/disable, who gets woken (hibernated by XEP-0198, inactive by XEP-0352, not an
active client), the summary's fields, the body only when allowed, coalescing, errors disabling."""

from __future__ import annotations

import asyncio
import time
from typing import Iterator
from xml.etree import ElementTree as ET

import pytest
from slixmpp.exceptions import IqError

from tests.app_server import APP, AppServer, component_server
from tests.api_client import Api, create_key
from tests.harness import DOMAIN, ServerProcess, free_port
from tests.slix import Client, run

INTERVAL = 3.0
PUSH = "urn:xmpp:push:0"
SM_PLUGINS = ("xep_0030", "xep_0199", "xep_0198")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = component_server(tmp_path_factory.mktemp("push"), **{
        "push.min_interval_seconds": INTERVAL, "push.max_registrations_per_user": 2,
        "http.enabled": True, "http.port": free_port(), "http.tls_port": 0})
    yield proc
    proc.stop()


def enable_xml(node: str, *, body: bool = False, secret: str = "device-secret") -> str:
    return (f"<enable xmlns='{PUSH}' jid='{APP}' node='{node}'><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
            f"<field var='secret'><value>{secret}</value></field>"
            f"<field var='appliance#include-body'><value>{'true' if body else 'false'}</value></field></x></enable>")


async def push_iq(client: Client, payload: str) -> None:
    iq = client.make_iq_set()
    iq.append(ET.fromstring(payload))
    await iq.send(timeout=10)


async def hibernated_phone(server: ServerProcess, jid: str, node: str, *, body: bool = False) -> Client:
    """A phone that enabled push, then lost its link with stream management on."""
    phone = Client(server, f"{jid}/phone", plugins=SM_PLUGINS)
    enabled = asyncio.get_running_loop().create_future()
    phone.add_event_handler("sm_enabled", lambda _: enabled.done() or enabled.set_result(True))
    await phone.login()
    await asyncio.wait_for(enabled, 10)
    await push_iq(phone, enable_xml(node, body=body))
    phone.transport.abort()  # the link dies under the client: no stream close
    await phone.disconnected
    assert server.logged(f"{jid}/phone: link lost; session kept")
    return phone


async def desk(server: ServerProcess, jid: str) -> Client:
    """The friend who sends the messages, from an ordinary online client."""
    friend = Client(server, f"{jid}/desk")
    await friend.login()
    return friend


async def stop(*clients: Client | AppServer) -> None:
    for client in clients:
        client.disconnect()
    await asyncio.sleep(0.3)  # the appliance notices the component left before the next test's connects


async def no_push(app: AppServer, seconds: float) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await app.next_push(timeout=seconds)


def test_hibernated_phone_gets_one_push_without_body(server: ServerProcess) -> None:
    phone_jid, friend_jid = server.add_user("push_phone"), server.add_user("push_friend")

    async def scenario() -> None:
        app = await AppServer(server).start()
        await hibernated_phone(server, phone_jid, "node-1")
        friend = await desk(server, friend_jid)
        friend.send_message(mto=phone_jid, mbody="secret words", mtype="chat")
        push = await app.next_push()
        assert push["from"] == phone_jid and push["node"] == "node-1"
        assert push["summary"] == {"FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1",
                                   "last-message-sender": f"{friend_jid}/desk"}
        assert push["options"]["secret"] == "device-secret" and "appliance#include-body" not in push["options"]
        await no_push(app, 1.0)
        await stop(friend, app)

    run(scenario())


def test_body_only_when_allowed_and_an_inactive_client_is_woken(server: ServerProcess) -> None:
    user, friend_jid = server.add_user("push_csi"), server.add_user("push_csi_friend")

    async def scenario() -> None:
        app = await AppServer(server).start()
        client = Client(server, f"{user}/phone")
        await client.login()
        await push_iq(client, enable_xml("node-csi", body=True))
        friend = await desk(server, friend_jid)
        friend.send_message(mto=user, mbody="while active", mtype="chat")
        assert (await client.next_message())["body"] == "while active"
        client.send_raw("<inactive xmlns='urn:xmpp:csi:0'/>")
        await asyncio.sleep(0.3)
        friend.send_message(mto=user, mbody="while inactive", mtype="chat")
        push = await app.next_push()  # the first: the active client's message woke nothing
        assert push["summary"]["last-message-body"] == "while inactive"
        assert push["summary"]["message-count"] == "1"
        await stop(friend, client, app)

    run(scenario())


def test_a_user_with_no_session_is_pushed_once(server: ServerProcess) -> None:
    user, friend_jid = server.add_user("push_gone"), server.add_user("push_gone_friend")

    async def scenario() -> None:
        app = await AppServer(server).start()
        client = Client(server, f"{user}/phone")
        await client.login()
        await push_iq(client, enable_xml("node-gone"))
        await client.logout()  # a clean logout: the message goes to offline storage
        friend = await desk(server, friend_jid)
        friend.send_message(mto=user, mbody="stored for later", mtype="chat")
        push = await app.next_push()
        assert push["node"] == "node-gone" and push["summary"]["message-count"] == "1"
        await stop(friend, app)

    run(scenario())


def test_a_notification_wakes_a_phone_that_is_not_there(server: ServerProcess) -> None:
    user = server.add_user("push_notified")
    api = Api(server, int(server.settings["http.port"]), create_key(server, "push-test"))  # type: ignore[arg-type]

    async def scenario() -> None:
        app = await AppServer(server).start()
        client = Client(server, f"{user}/phone")
        await client.login()
        await push_iq(client, enable_xml("node-notified", body=True))
        await client.logout()
        await asyncio.to_thread(api.notify, {"users": [user]}, title="Door open", body="back door")
        push = await app.next_push()
        assert push["node"] == "node-notified" and push["summary"]["last-message-sender"] == DOMAIN
        assert push["summary"]["last-message-body"] == "back door"
        await stop(app)

    run(scenario())


def test_a_burst_gives_one_push_then_one_coalesced(server: ServerProcess) -> None:
    phone_jid, friend_jid = server.add_user("push_burst"), server.add_user("push_burst_friend")

    async def scenario() -> None:
        app = await AppServer(server).start()
        await hibernated_phone(server, phone_jid, "node-burst")
        friend = await desk(server, friend_jid)
        for n in range(5):
            friend.send_message(mto=phone_jid, mbody=f"burst {n}", mtype="chat")
        first = await app.next_push()
        started = time.monotonic()
        second = await app.next_push(timeout=INTERVAL + 5)
        waited = time.monotonic() - started
        assert first["summary"]["message-count"] == "1"
        assert second["summary"]["message-count"] == "4"
        assert waited > INTERVAL - 1.0
        await no_push(app, INTERVAL + 1.0)
        await stop(friend, app)

    run(scenario())


def test_enable_disable_and_their_errors(server: ServerProcess) -> None:
    user, friend_jid = server.add_user("push_toggle"), server.add_user("push_toggle_friend")

    async def scenario() -> None:
        app = await AppServer(server).start()
        client = Client(server, f"{user}/phone", plugins=SM_PLUGINS)
        await client.login()
        info = await client.plugin["xep_0030"].get_info(jid=user, timeout=10)
        assert PUSH in info["disco_info"]["features"]
        await push_iq(client, enable_xml("a"))
        await push_iq(client, enable_xml("b"))
        await push_iq(client, enable_xml("a", secret="replaced"))  # the same node again replaces it
        with pytest.raises(IqError) as full:
            await push_iq(client, enable_xml("c"))
        assert full.value.iq["error"]["condition"] == "resource-constraint"
        with pytest.raises(IqError) as no_node:
            await push_iq(client, f"<enable xmlns='{PUSH}' jid='{APP}'/>")
        assert no_node.value.iq["error"]["condition"] == "bad-request"
        await push_iq(client, f"<disable xmlns='{PUSH}' jid='{APP}' node='b'/>")
        client.send_raw("<inactive xmlns='urn:xmpp:csi:0'/>")
        await asyncio.sleep(0.3)
        friend = await desk(server, friend_jid)
        friend.send_message(mto=user, mbody="one", mtype="chat")
        push = await app.next_push()
        assert push["node"] == "a" and push["options"]["secret"] == "replaced"
        await no_push(app, 1.0)  # not to the disabled "b"
        await push_iq(client, f"<disable xmlns='{PUSH}' jid='{APP}'/>")  # every node of the service
        await asyncio.sleep(INTERVAL)
        friend.send_message(mto=user, mbody="two", mtype="chat")
        await no_push(app, 1.5)
        await stop(friend, client, app)

    run(scenario())


def test_an_app_server_error_disables_the_registration(server: ServerProcess) -> None:
    phone_jid, friend_jid = server.add_user("push_refused"), server.add_user("push_refused_friend")

    async def scenario() -> None:
        app = await AppServer(server, error="item-not-found").start()
        await hibernated_phone(server, phone_jid, "stale-node")
        friend = await desk(server, friend_jid)
        friend.send_message(mto=phone_jid, mbody="first", mtype="chat")
        assert (await app.next_push())["node"] == "stale-node"
        assert server.logged(f"{APP} answered a push with item-not-found")
        await asyncio.sleep(INTERVAL)
        friend.send_message(mto=phone_jid, mbody="second", mtype="chat")
        await no_push(app, 1.5)
        await stop(friend, app)

    run(scenario())
