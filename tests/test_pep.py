"""XEP-0163 Personal Eventing Protocol with slixmpp clients (xep_0060, xep_0163, xep_0115, xep_0172)
against a real server process: publish and retrieve, access models, publish-options, limits,
+notify filtering through entity capabilities, the last published item, retract and delete.

"Nothing arrived" is checked without sleeping: after an event a client must not get, one it must
get is published, and it has to be the first to arrive.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import sqlite3
import time
from contextlib import closing
from typing import Any, Iterator

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from tests.harness import ServerProcess
from tests.raw import RawClient
from tests.slix import Client, run
from tests.test_rfc6121 import befriend

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = "http://jabber.org/protocol/pubsub#owner"
ERRORS = "http://jabber.org/protocol/pubsub#errors"
EVENT = "http://jabber.org/protocol/pubsub#event"
NICK = "http://jabber.org/protocol/nick"
SENTINEL = "urn:test:sentinel"
DEVICES = "urn:appliance:e2e:0:devices"
BASE_PLUGINS = ("xep_0030", "xep_0199", "xep_0060", "xep_0115", "xep_0163")
MAX_ITEMS, MAX_BYTES, MAX_NODES = 5, 2000, 6
QUIET = 0.6   # how long "nothing arrives" is watched for
_numbers = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("pep"), settings={
        "pep.max_items_per_node": MAX_ITEMS, "pep.max_item_bytes": MAX_BYTES, "pep.max_nodes_per_user": MAX_NODES})
    proc.start()
    yield proc
    proc.stop()


def new_users(server: ServerProcess, *names: str) -> list[str]:
    return server.add_users(*names, prefix="pep")


async def login(server: ServerProcess, jid: str, resource: str = "phone", *, nick: bool = False,
                interests: tuple[str, ...] = ()) -> Client:
    """A client whose pubsub events land in `client.events` as (node, element): items, retract,
    delete and purge, one entry per item. `nick`: with xep_0172, i.e. nick+notify in its caps."""
    client = Client(server, f"{jid}/{resource}", plugins=BASE_PLUGINS + (("xep_0172",) if nick else ()))
    client.events = asyncio.Queue()
    for name in ("pubsub_publish", "pubsub_retract", "pubsub_purge", "pubsub_delete"):
        client.add_event_handler(name, lambda m: _collect_events(client, m))
    await client.login(send_presence=False, get_roster=True)
    for namespace in interests:
        client.plugin["xep_0030"].add_feature(f"{namespace}+notify")
    await client.plugin["xep_0115"].update_caps(broadcast=False)
    client.send_presence()
    await client.plugin["xep_0199"].ping(timeout=5)
    return client


def _collect_events(client: Client, message: Any) -> None:
    event = message.xml.find(f"{{{EVENT}}}event")
    if event is None:
        return
    for child in event:
        node = child.get("node")
        inner = list(child) or [child]
        for element in inner:
            client.events.put_nowait((node, element))


async def next_event(client: Client, timeout: float = 10) -> tuple[str, Any]:
    return await asyncio.wait_for(client.events.get(), timeout)


async def iq(client: Client, xml: str, to: str | None = None, itype: str = "set") -> Any:
    request = client.Iq(stype=itype, sto=to)
    request.append(ET.fromstring(xml))
    return await request.send(timeout=5)


async def iq_error(client: Client, xml: str, to: str | None = None, itype: str = "set") -> tuple[str, str | None]:
    """The error's condition and its pubsub#errors condition, if any."""
    with pytest.raises(IqError) as caught:
        await iq(client, xml, to, itype)
    error = caught.value.iq.xml.find("{jabber:client}error")
    specific = [child.tag.split("}")[1] for child in error if child.tag.startswith(f"{{{ERRORS}}}")]
    return caught.value.iq["error"]["condition"], (specific[0] if specific else None)


def publish_xml(node: str, payload: str, item_id: str | None = None, **options: str) -> str:
    item = f"<item id='{item_id}'>{payload}</item>" if item_id else f"<item>{payload}</item>"
    form = ""
    if options:
        fields = "".join(f"<field var='pubsub#{k}'><value>{v}</value></field>" for k, v in options.items())
        form = (f"<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
                f"<value>{PUBSUB}#publish-options</value></field>{fields}</x></publish-options>")
    return f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'>{item}</publish>{form}</pubsub>"


async def publish(client: Client, node: str, payload: str, item_id: str | None = None, **options: str) -> str:
    result = await iq(client, publish_xml(node, payload, item_id, **options))
    return result.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item").get("id")


async def items(client: Client, owner: str, node: str, extra: str = "", inner: str = "") -> list[tuple[str, str]]:
    result = await iq(client, f"<pubsub xmlns='{PUBSUB}'><items node='{node}' {extra}>{inner}</items></pubsub>",
                      owner, "get")
    found = result.xml.findall(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item")
    return [(item.get("id"), (item[0].text or "")) for item in found]


def payload(text: str, namespace: str = "urn:test:data") -> str:
    return f"<data xmlns='{namespace}'>{text}</data>"


async def logout(*clients: Client) -> None:
    await asyncio.gather(*(c.logout() for c in clients))


# ---- publish and retrieve ----------------------------------------------------------------------

def test_publish_retrieve_and_access_models(server: ServerProcess) -> None:
    alice, bob, carol = new_users(server, "alice", "bob", "carol")

    async def scenario() -> None:
        a, b, c = await asyncio.gather(login(server, alice), login(server, bob), login(server, carol))
        await befriend(a, b)
        generated = await publish(a, "urn:test:presence", payload("one"))
        assert generated  # an id is made when the item has none, and the result carries it
        await publish(a, "urn:test:presence", payload("two"), "second")
        await publish(a, "urn:test:open", payload("public"), "current", access_model="open")
        await publish(a, "urn:test:private", payload("secret"), "current", access_model="whitelist")
        assert await items(a, alice, "urn:test:presence") == [("second", "two")]   # max_items defaults to 1
        assert await items(b, alice, "urn:test:presence") == [("second", "two")]
        assert await items(b, alice, "urn:test:presence", inner="<item id='second'/>") == [("second", "two")]
        assert await iq_error(b, f"<pubsub xmlns='{PUBSUB}'><items node='urn:test:presence'>"
                                 "<item id='nope'/></items></pubsub>", alice, "get") == ("item-not-found", None)
        assert await iq_error(c, f"<pubsub xmlns='{PUBSUB}'><items node='urn:test:presence'/></pubsub>",
                              alice, "get") == ("not-authorized", "presence-subscription-required")
        assert await items(c, alice, "urn:test:open") == [("current", "public")]
        assert await iq_error(b, f"<pubsub xmlns='{PUBSUB}'><items node='urn:test:private'/></pubsub>",
                              alice, "get") == ("not-allowed", "closed-node")
        assert await items(a, alice, "urn:test:private") == [("current", "secret")]   # XEP-0223
        assert await iq_error(b, f"<pubsub xmlns='{PUBSUB}'><items node='urn:test:none'/></pubsub>",
                              alice, "get") == ("item-not-found", None)
        assert await iq_error(b, publish_xml("urn:test:presence", payload("x")), alice) == ("forbidden", None)
        assert await iq_error(b, f"<pubsub xmlns='{PUBSUB}'><subscribe node='urn:test:presence' jid='{bob}'/>"
                                 "</pubsub>", alice) == ("feature-not-implemented", "unsupported")
        info = await a.plugin["xep_0030"].get_info(jid=alice, timeout=5)
        assert ("pubsub", "pep", None, None) in info["disco_info"]["identities"]
        assert {f"{PUBSUB}#publish-options", f"{PUBSUB}#access-whitelist", f"{PUBSUB}#last-published"} \
            <= set(info["disco_info"]["features"])
        seen_by = {}
        for who, client in (("alice", a), ("bob", b)):
            disco = await client.plugin["xep_0030"].get_items(jid=alice, timeout=5)
            seen_by[who] = {node for _, node, _ in disco["disco_items"]["items"]}
        assert seen_by["alice"] == {"urn:test:presence", "urn:test:open", "urn:test:private"}
        assert seen_by["bob"] == {"urn:test:presence", "urn:test:open"}
        with pytest.raises(IqError) as caught:
            await c.plugin["xep_0030"].get_items(jid=alice, timeout=5)
        assert caught.value.iq["error"]["condition"] == "service-unavailable"   # strangers: nothing
        await logout(a, b, c)

    run(scenario())


def test_publish_options_are_preconditions(server: ServerProcess) -> None:
    (alice,) = new_users(server, "alice")

    async def scenario() -> None:
        a = await login(server, alice)
        await publish(a, DEVICES, payload("keys"), "current", access_model="presence")
        await publish(a, DEVICES, payload("keys2"), "current", access_model="presence")   # same: fine
        assert await iq_error(a, publish_xml(DEVICES, payload("k"), "current", access_model="open")) \
            == ("conflict", "precondition-not-met")
        assert await iq_error(a, publish_xml(DEVICES, payload("k"), "current", max_items="max")) \
            == ("conflict", "precondition-not-met")
        assert await iq_error(a, publish_xml("urn:test:bad", payload("k"), access_model="authorize")) \
            == ("not-acceptable", "unsupported-access-model")
        assert await items(a, alice, DEVICES) == [("current", "keys2")]
        # the owner may change the node's configuration, then publish with the new options
        config = await a.plugin["xep_0060"].get_node_config(None, DEVICES, timeout=5)
        form = config["pubsub_owner"]["configure"]["form"]
        assert form.get_values()["pubsub#access_model"] == "presence"
        await iq(a, f"<pubsub xmlns='{OWNER}'><configure node='{DEVICES}'><x xmlns='jabber:x:data' type='submit'>"
                    f"<field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#node_config</value></field>"
                    "<field var='pubsub#access_model'><value>open</value></field></x></configure></pubsub>")
        await publish(a, DEVICES, payload("k3"), "current", access_model="open")
        await a.logout()

    run(scenario())


def test_limits(server: ServerProcess) -> None:
    (alice,) = new_users(server, "alice")

    async def scenario() -> None:
        a = await login(server, alice)
        condition, specific = await iq_error(a, publish_xml("urn:test:big", payload("x" * MAX_BYTES)))
        assert (condition, specific) == ("not-acceptable", "payload-too-big")
        for number in range(MAX_ITEMS + 2):
            await publish(a, "urn:test:many", payload(str(number)), f"i{number}", max_items="max")
        kept = await items(a, alice, "urn:test:many")
        assert [item_id for item_id, _ in kept] == [f"i{n}" for n in range(2, MAX_ITEMS + 2)]  # oldest dropped
        assert await items(a, alice, "urn:test:many", "max_items='2'") == [("i5", "5"), ("i6", "6")]
        for number in range(MAX_NODES - 1):
            await publish(a, f"urn:test:node{number}", payload("n"))
        assert await iq_error(a, publish_xml("urn:test:one-too-many", payload("n"))) == ("resource-constraint", None)
        await a.logout()

    run(scenario())


# ---- notifications -------------------------------------------------------------------------------

def test_notifications_follow_notify_interest(server: ServerProcess) -> None:
    alice, bob, dave, carol = new_users(server, "alice", "bob", "dave", "carol")

    async def scenario() -> None:
        a = await login(server, alice, nick=True)
        a2 = await login(server, alice, "laptop", nick=True)
        b = await login(server, bob, nick=True)                        # nick+notify in its caps
        d = await login(server, dave, interests=(SENTINEL,))          # no nick+notify
        c = await login(server, carol, nick=True, interests=(SENTINEL,))   # a stranger
        await befriend(a, b)
        await befriend(a, d)
        nicks = asyncio.Queue()
        b.add_event_handler("user_nick_publish", nicks.put_nowait)
        await a.plugin["xep_0172"].publish_nick("Alice", timeout=5)
        event = await asyncio.wait_for(nicks.get(), 10)
        assert event["from"] == alice and event["type"] == "headline"
        assert event["pubsub_event"]["items"]["item"]["payload"].text == "Alice"
        assert (await next_event(a2))[0] == NICK                      # the owner's other resource too
        await publish(a, SENTINEL, payload("after the nick"), "current")
        node, element = await next_event(d)                           # dave never got the nick
        assert node == SENTINEL and element[0].text == "after the nick"
        await publish(a, SENTINEL, payload("open"), "current2")
        # carol is a stranger: a presence node's events never reach her; then a node of her own does
        await publish(c, SENTINEL, payload("carol's own"), "mine")
        assert (await next_event(c))[1][0].text == "carol's own"
        await logout(a, a2, b, d, c)
        assert "do not hash" not in server.log_text()   # slixmpp's caps verified (XEP-0115 §5)

    run(scenario())


def test_avatar_with_slixmpp_xep_0084(server: ServerProcess) -> None:
    """XEP-0084 as clients do it: data and metadata nodes, the metadata event, then the data by id."""
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a = Client(server, f"{alice}/phone", plugins=BASE_PLUGINS + ("xep_0084",))
        b = Client(server, f"{bob}/phone", plugins=BASE_PLUGINS + ("xep_0084",))
        metadata = asyncio.Queue()
        b.add_event_handler("avatar_metadata_publish", metadata.put_nowait)
        await asyncio.gather(a.login(), b.login())
        await befriend(a, b)
        image = bytes(range(256)) * 4
        avatar_id = a.plugin["xep_0084"].generate_id(image)
        await a.plugin["xep_0084"].publish_avatar(image, timeout=5)
        await a.plugin["xep_0084"].publish_avatar_metadata(
            {"id": avatar_id, "type": "image/png", "bytes": len(image)}, timeout=5)
        event = await asyncio.wait_for(metadata.get(), 10)
        assert event["pubsub_event"]["items"]["item"]["id"] == avatar_id
        fetched = await b.plugin["xep_0084"].retrieve_avatar(alice, avatar_id, timeout=5)
        assert fetched["pubsub"]["items"]["item"]["payload"].text.strip() \
            == base64.b64encode(image).decode()
        await logout(a, b)

    run(scenario())


def test_last_item_when_a_contact_comes_online(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a, b = await asyncio.gather(login(server, alice), login(server, bob))
        await befriend(a, b)
        await b.logout()
        await publish(a, NICK, f"<nick xmlns='{NICK}'>first</nick>", "current")
        await publish(a, NICK, f"<nick xmlns='{NICK}'>Alice</nick>", "current")
        await publish(a, DEVICES, payload("device keys", DEVICES), "current")
        b = await login(server, bob, nick=True, interests=(DEVICES,))
        got = dict([await next_event(b), await next_event(b)])
        assert got[NICK].find(f"{{{NICK}}}nick").text == "Alice"     # only the last item of each node
        assert got[DEVICES][0].text == "device keys"
        await logout(a, b)

    run(scenario())


def test_last_item_when_a_subscription_starts(server: ServerProcess) -> None:
    """Both online, not yet contacts: once alice shares presence with bob, he gets her device keys."""
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a = await login(server, alice)
        await publish(a, DEVICES, payload("keys", DEVICES), "current")
        b = await login(server, bob, interests=(DEVICES,))
        await befriend(a, b)
        node, item = await next_event(b)
        assert (node, item[0].text) == (DEVICES, "keys")
        await publish(a, DEVICES, payload("keys2", DEVICES), "current")
        assert (await next_event(b))[1][0].text == "keys2"   # the live event: the last item came once
        await logout(a, b)

    run(scenario())


def test_retract_delete_and_purge_notify(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        a = await login(server, alice)
        b = await login(server, bob, interests=(DEVICES,))
        await befriend(a, b)
        await publish(a, DEVICES, payload("k1", DEVICES), "one", max_items="5")
        await publish(a, DEVICES, payload("k2", DEVICES), "two", max_items="5")
        assert [(await next_event(b))[1].get("id") for _ in range(2)] == ["one", "two"]
        await a.plugin["xep_0060"].retract(None, DEVICES, "one", notify=True, timeout=5)
        node, retract = await next_event(b)
        assert (node, retract.tag, retract.get("id")) == (DEVICES, f"{{{EVENT}}}retract", "one")
        assert await items(b, alice, DEVICES) == [("two", "k2")]
        assert await iq_error(a, f"<pubsub xmlns='{PUBSUB}'><retract node='{DEVICES}'><item id='one'/></retract>"
                                 "</pubsub>") == ("item-not-found", None)
        await iq(a, f"<pubsub xmlns='{OWNER}'><purge node='{DEVICES}'/></pubsub>")
        node, purge = await next_event(b)
        assert (node, purge.tag) == (DEVICES, f"{{{EVENT}}}purge")
        assert await items(b, alice, DEVICES) == []
        await a.plugin["xep_0060"].delete_node(None, DEVICES, timeout=5)
        node, delete = await next_event(b)
        assert (node, delete.tag) == (DEVICES, f"{{{EVENT}}}delete")
        assert await iq_error(b, f"<pubsub xmlns='{PUBSUB}'><items node='{DEVICES}'/></pubsub>",
                              alice, "get") == ("item-not-found", None)
        await logout(a, b)

    run(scenario())


def test_events_wait_while_the_phone_is_inactive(server: ServerProcess) -> None:
    """XEP-0352: PEP events are not urgent; an inactive client gets them when it is active again."""
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        # alice without caps: slixmpp would otherwise ask her client for its features (disco#info,
        # whose answer is urgent and flushes what the server holds for bob)
        a = Client(server, alice, plugins=("xep_0030", "xep_0199"))
        await a.login()
        b = await login(server, bob, interests=(DEVICES,))
        await befriend(a, b)
        b.send_raw("<inactive xmlns='urn:xmpp:csi:0'/>")
        await b.plugin["xep_0199"].ping(timeout=5)   # the server has read <inactive/>
        await publish(a, DEVICES, payload("held", DEVICES), "current")
        await asyncio.sleep(QUIET)
        assert b.events.empty()
        b.send_raw("<active xmlns='urn:xmpp:csi:0'/>")
        assert (await next_event(b))[1][0].text == "held"
        await logout(a, b)

    run(scenario())


def test_caps_asked_again_when_the_resource_asked_leaves(server: ServerProcess) -> None:
    """One disco#info query per unknown ver; a resource that leaves without answering does not
    leave later ones with that ver waiting for ever: the next one is asked."""
    mute_user, other_user = new_users(server, "mute", "other")
    number = next(_numbers)
    caps = (f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:test:caps'"
            f" ver='unknown{number}='/></presence>")
    mute = RawClient(server).open()
    mute.login(mute_user.split("@")[0])
    mute.send(caps)
    assert f"urn:test:caps#unknown{number}=".encode() in mute.read_until(b"</iq>")
    mute.close()                                     # gone without answering
    other = RawClient(server).open()
    other.login(other_user.split("@")[0])
    other.send(caps)
    asked = other.read_until(b"</iq>")
    assert b"disco#info" in asked and f"unknown{number}=".encode() in asked
    other.close()


# ---- storage -----------------------------------------------------------------------------------------

def test_nodes_persist_across_a_restart_and_go_with_the_account(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    alice, bob = fresh_server.add_user("alice"), fresh_server.add_user("bob")

    async def before() -> None:
        a, b = await asyncio.gather(login(fresh_server, alice), login(fresh_server, bob))
        await befriend(a, b)
        await publish(a, DEVICES, payload("keys", DEVICES), "current")
        await logout(a, b)

    async def after() -> None:
        b = await login(fresh_server, bob, interests=(DEVICES,))
        assert (await next_event(b))[1][0].text == "keys"       # the last item, from disk
        assert await items(b, alice, DEVICES) == [("current", "keys")]
        a = Client(fresh_server, alice, plugins=("xep_0030", "xep_0077"))
        await a.login()
        await a.plugin["xep_0077"].cancel_registration(timeout=5)
        await b.logout()

    run(before())
    fresh_server.stop()
    fresh_server.start()
    run(after())
    assert stored_rows(fresh_server, "pep_nodes") == stored_rows(fresh_server, "pep_items") == 0


def stored_rows(server: ServerProcess, table: str, timeout: float = 5.0) -> int:
    """Rows left in `table`, waiting up to `timeout` for them to go (XEP-0077 answers first, then
    the account is deleted)."""
    deadline = time.monotonic() + timeout
    with closing(sqlite3.connect(server.data / "appliance.sqlite3")) as conn:
        while (rows := conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
    return rows
