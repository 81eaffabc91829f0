"""Notifications end to end: a real server process with its web server on, the API over real HTTP,
slixmpp clients over real sockets (raw XML only for a client that never acknowledges)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, Callable, Iterator

import pytest

from tests.api_client import Api, create_key, database, web_server
from tests.harness import ServerProcess
from tests.raw import RawClient
from tests.slix import Client, run

OOB_URL = "{jabber:x:oob}x/{jabber:x:oob}url"
SM_PLUGINS = ("xep_0030", "xep_0199", "xep_0198")
_numbers = itertools.count()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    # Acks asked for within half a second, so delivery counts move quickly.
    server, port = web_server(tmp_path_factory.mktemp("notify"), {"stream_management.request_seconds": 0.5})
    try:
        yield Api(server, port, create_key(server, "tests"))
    finally:
        server.stop()


def users(api: Api, *names: str) -> list[str]:
    """Fresh accounts for one test (the server is shared): their bare JIDs."""
    n = next(_numbers)
    return [api.server.add_user(f"{name}{n}") for name in names]


def local(jid: str) -> str:
    return jid.split("@")[0]


def delivered(count: int) -> Any:
    return lambda status: status["delivered"] >= count


async def counted(api: Api, notification_id: int, count: int) -> dict[str, Any]:
    """The status once `count` deliveries are counted, polled while the clients keep running
    (they must answer the server's ack requests)."""
    return await asyncio.to_thread(api.wait_status, notification_id, delivered(count))


async def sm_client(server: ServerProcess, jid: str, **kwargs: Any) -> Client:
    client = Client(server, jid, plugins=kwargs.pop("plugins", SM_PLUGINS))
    await client.login(**kwargs)
    return client


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.05)


async def no_message(client: Client, wait: float) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await client.next_message(timeout=wait)


def test_online_recipient_gets_the_headline_and_it_counts_once_acked(api: Api) -> None:
    (alice,) = users(api, "alice")

    async def scenario() -> dict[str, Any]:
        phone = await sm_client(api.server, alice)
        await asyncio.wait_for(until(lambda: phone.plugin["xep_0198"].enabled_in), 10)   # acks will count
        sent = api.notify({"users": [local(alice)]}, title="Order 42 ready", body="Counter 3",
                          link="https://shop.example/orders/42", priority="high", ttl=600)
        message = await phone.next_message()
        status = await counted(api, sent["id"], 1)
        await phone.logout()
        return sent, message, status

    sent, message, status = run(scenario())
    assert (sent["recipients"], sent["pending"], sent["to"]) == (1, 1, {"users": [local(alice)]})
    assert message["type"] == "headline" and message["from"].full == api.server.domain
    assert message["id"] == f"notification-{sent['id']}"
    assert message["subject"] == "Order 42 ready"
    assert message["body"] == "Counter 3\nhttps://shop.example/orders/42"
    assert message.xml.find(OOB_URL).text == "https://shop.example/orders/42"
    assert (status["recipients"], status["delivered"], status["pending"], status["expired"]) == (1, 1, 0, False)


def test_without_stream_management_written_counts_as_delivered(api: Api) -> None:
    (bob,) = users(api, "bob")

    async def scenario() -> Any:
        desktop = await sm_client(api.server, bob, plugins=("xep_0030",))
        sent = api.notify({"users": [bob]}, title="Storm warning")   # a bare JID works as well
        message = await desktop.next_message()
        await desktop.logout()
        return sent, message

    sent, message = run(scenario())
    assert message["body"] == "Storm warning"   # no body given: the title, so every client shows something
    assert api.wait_status(sent["id"], delivered(1))["pending"] == 0


def test_an_offline_user_gets_it_at_login_and_the_count_rises(api: Api) -> None:
    online, offline = users(api, "on", "off")

    async def scenario() -> None:
        first = await sm_client(api.server, online)
        sent = api.notify({"users": [local(online), local(offline)]}, title="Door open")
        await first.next_message()
        status = await counted(api, sent["id"], 1)
        assert (status["delivered"], status["pending"]) == (1, 1)
        later = await sm_client(api.server, offline)
        assert (await later.next_message())["subject"] == "Door open"
        status = await counted(api, sent["id"], 2)
        assert (status["delivered"], status["pending"]) == (2, 0)
        await later.logout()
        again = await sm_client(api.server, offline)   # delivered: not sent a second time
        await no_message(again, 1.5)
        await first.logout()
        await again.logout()

    run(scenario())


def test_an_expired_notification_is_not_delivered(api: Api) -> None:
    (late,) = users(api, "late")
    sent = api.notify({"users": [local(late)]}, title="Short-lived", ttl=1)
    time.sleep(2)

    async def scenario() -> None:
        client = await sm_client(api.server, late)
        await no_message(client, 1.5)
        await client.logout()

    run(scenario())
    status = api.status(sent["id"])
    assert (status["expired"], status["delivered"], status["pending"]) == (True, 0, 1)


def test_the_online_audience_is_who_was_online_then(api: Api) -> None:
    here, away = users(api, "here", "away")

    async def scenario() -> dict[str, Any]:
        present = await sm_client(api.server, here)
        await present.plugin["xep_0199"].ping(timeout=10)   # its presence has been handled: it is online
        sent = api.notify({"online": True}, title="Lunch is ready")
        assert (await present.next_message())["subject"] == "Lunch is ready"
        comer = await sm_client(api.server, away)
        await no_message(comer, 1.5)
        await present.logout()
        await comer.logout()
        return sent

    sent = run(scenario())
    with database(api.server) as conn:
        recipients = {name for (name,) in conn.execute(
            "SELECT username FROM notification_deliveries WHERE notification_id = ?", (sent["id"],))}
    assert local(here) in recipients and local(away) not in recipients
    assert sent["to"] == {"online": True} and sent["recipients"] == len(recipients)


def test_a_session_that_ends_unacknowledged_leaves_it_pending(api: Api) -> None:
    (carol,) = users(api, "carol")
    raw = raw_sm_session(api, carol)
    sent = api.notify({"users": [local(carol)]}, title="Parcel at the gate")
    assert b"Parcel at the gate" in raw.read_until(b"</message>")
    raw.close()   # got it, never acknowledged it
    time.sleep(1)
    assert api.status(sent["id"])["pending"] == 1

    async def scenario() -> Any:
        client = await sm_client(api.server, carol)
        message = await client.next_message()
        status = await counted(api, sent["id"], 1)
        await client.logout()
        return message, status

    message, status = run(scenario())
    assert message["subject"] == "Parcel at the gate"
    assert (status["delivered"], status["pending"]) == (1, 0)


def raw_sm_session(api: Api, jid: str) -> RawClient:
    """A logged-in, available session with stream management that never acknowledges anything."""
    raw = RawClient(api.server).open()
    raw.login(local(jid))
    raw.send("<enable xmlns='urn:xmpp:sm:3'/>")
    raw.read_until(b"/>")
    raw.presence()
    return raw


def test_what_an_ending_session_held_goes_to_the_users_other_session(api: Api) -> None:
    (frank,) = users(api, "frank")
    raw = raw_sm_session(api, frank)
    sent = api.notify({"users": [local(frank)]}, title="Gate left open")
    assert b"Gate left open" in raw.read_until(b"</message>")

    async def scenario() -> dict[str, Any]:
        desktop = await sm_client(api.server, frank)
        await no_message(desktop, 1.5)   # the raw session holds it: not sent twice
        raw.close()                      # ... and ends without acknowledging it
        assert (await desktop.next_message())["subject"] == "Gate left open"
        status = await counted(api, sent["id"], 1)
        await desktop.logout()
        return status

    status = run(scenario())
    assert (status["delivered"], status["pending"]) == (1, 0)


def test_high_priority_wakes_an_inactive_client_and_low_waits(api: Api) -> None:
    (dave,) = users(api, "dave")

    async def scenario() -> None:
        phone = await sm_client(api.server, dave, plugins=SM_PLUGINS + ("xep_0352",))
        # slixmpp may start the session before it has seen <csi/>, and ignores send_inactive until then.
        await asyncio.wait_for(until(lambda: phone.plugin["xep_0352"].enabled), 10)
        phone.plugin["xep_0352"].send_inactive()
        await phone.plugin["xep_0199"].ping(timeout=10)   # the server has read <inactive/>
        api.notify({"users": [local(dave)]}, title="Fire alarm", priority="urgent")
        assert (await phone.next_message())["subject"] == "Fire alarm"
        low = api.notify({"users": [local(dave)]}, title="Newsletter", priority="low")
        await no_message(phone, 2)
        assert api.status(low["id"])["delivered"] == 0
        phone.plugin["xep_0352"].send_active()
        assert (await phone.next_message())["subject"] == "Newsletter"
        assert (await counted(api, low["id"], 1))["delivered"] == 1
        await phone.logout()

    run(scenario())


def test_group_and_everyone_audiences(api: Api) -> None:
    members = users(api, "member", "colleague")
    outsider = users(api, "outsider")[0]
    group = f"staff{next(_numbers)}"
    with database(api.server) as conn:
        conn.execute("INSERT INTO user_groups (name, created) VALUES (?, ?)", (group, time.time()))
        conn.executemany("INSERT INTO user_group_members (group_name, username) VALUES (?, ?)",
                         [(group, local(m)) for m in members])
    to_group = api.notify({"group": group}, title="Staff meeting")
    with database(api.server) as conn:
        accounts = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        recipients = {name for (name,) in conn.execute(
            "SELECT username FROM notification_deliveries WHERE notification_id = ?", (to_group["id"],))}
    assert recipients == {local(m) for m in members} and local(outsider) not in recipients
    assert (to_group["recipients"], to_group["to"]) == (2, {"group": group})
    assert api.notify({"everyone": True}, title="Closing early")["recipients"] == accounts
    unknown = api.request("POST", "/api/v1/notifications", {"title": "x", "to": {"group": "no-such-group"}})
    assert (unknown.status, unknown.json["reason"]) == (404, "no such group: no-such-group")


@pytest.mark.parametrize("fields, status, words", [
    ({"title": "", "to": {"everyone": True}}, 400, "needs a title"),
    ({"title": "x" * 201, "to": {"everyone": True}}, 413, "title is longer than 200"),
    ({"title": "x", "link": "javascript:alert(1)", "to": {"everyone": True}}, 400, "http:// or https://"),
    ({"title": "x", "priority": "loud", "to": {"everyone": True}}, 400, "priority must be one of"),
    ({"title": "x", "ttl": 0, "to": {"everyone": True}}, 400, "ttl must be"),
    ({"title": "x", "ttl": 91 * 86400, "to": {"everyone": True}}, 400, "at most 90 days"),
    ({"title": "x", "to": {"users": ["nobody-here"]}}, 404, "no such user: nobody-here"),
    ({"title": "x", "to": {"friends": True}}, 400, 'bad "to"'),
    ({"title": "x\u0007", "to": {"everyone": True}}, 400, "control characters"),
])
def test_invalid_requests_are_refused_and_nothing_is_stored(api: Api, fields: dict, status: int,
                                                           words: str) -> None:
    with database(api.server) as conn:
        before = conn.execute("SELECT count(*) FROM notifications").fetchone()[0]
    reply = api.request("POST", "/api/v1/notifications", fields)
    assert reply.status == status and words in reply.json["reason"], reply.body
    with database(api.server) as conn:
        assert conn.execute("SELECT count(*) FROM notifications").fetchone()[0] == before

