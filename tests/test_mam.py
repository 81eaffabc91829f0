"""XEP-0313 Message Archive Management and XEP-0359 stanza ids against a real server process:
raw XML where the exact stanzas matter, slixmpp's xep_0313 plugin to show a stock client copes."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections import deque
from typing import Iterator

import pytest
from lxml import etree

from tests.harness import ServerProcess
from tests.raw import RawClient
from tests.slix import Client, run

MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
XDATA = "jabber:x:data"
CLIENT = "jabber:client"
HINTS = "urn:xmpp:hints"
_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("mam"))
    proc.start()
    yield proc
    proc.stop()


def new_users(server: ServerProcess, *names: str) -> list[str]:
    return server.add_users(*names, prefix="mam")


class Peer:
    """A raw client that reads whole stanzas (an incremental parser over the socket)."""

    def __init__(self, server: ServerProcess, jid: str, resource: str = "raw", *, presence: bool = True) -> None:
        self.raw = RawClient(server).open()
        self.full = self.raw.login(jid.split("@")[0], resource=resource)
        self.bare = jid
        self.parser = etree.XMLPullParser(events=("start", "end"))
        self.parser.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        self.depth = 0
        self.ready: deque[etree._Element] = deque()
        if presence:
            self.raw.send("<presence/>")
            self.ping()

    def next(self, timeout: float = 5.0) -> etree._Element:
        deadline = time.monotonic() + timeout
        while not self.ready:
            if self.raw.buffer:
                self.parser.feed(self.raw.buffer)
                self.raw.buffer = b""
                self._collect()
            if not self.ready:
                self.raw._receive(deadline)
        return self.ready.popleft()

    def _collect(self) -> None:
        for event, el in self.parser.read_events():
            if event == "start":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.ready.append(el)

    def until(self, kind: str, id_: str | None = None) -> tuple[list[etree._Element], etree._Element]:
        """Everything before the first `kind` stanza (with that id), and that stanza."""
        before = []
        while True:
            el = self.next()
            if etree.QName(el).localname == kind and (id_ is None or el.get("id") == id_):
                return before, el
            before.append(el)

    def iq(self, payload: str, type_: str = "set",
           to: str | None = None) -> tuple[list[etree._Element], etree._Element]:
        id_ = f"iq{next(_ids)}"
        to_attr = f" to='{to}'" if to else ""
        self.raw.send(f"<iq type='{type_}' id='{id_}'{to_attr}>{payload}</iq>")
        return self.until("iq", id_)

    def ping(self) -> list[etree._Element]:
        """A round trip: what the server queued for us before it, in order."""
        return self.iq("<ping xmlns='urn:xmpp:ping'/>", "get")[0]

    def send(self, to: str, body: str | None, type_: str = "chat", extra: str = "") -> None:
        body_xml = f"<body>{body}</body>" if body is not None else ""
        self.raw.send(f"<message to='{to}' type='{type_}' id='m{next(_ids)}'>{body_xml}{extra}</message>")

    def messages(self, n: int) -> list[etree._Element]:
        return [self.next() for _ in range(n)]

    def query(self, form: dict[str, str | list[str]] | None = None, rsm: str = "", extra: str = "",
              queryid: str = "q") -> tuple[list[etree._Element], etree._Element]:
        """(the <result/> messages, the IQ with <fin/>); raises on an error answer."""
        results, iq = self.iq(f"<query xmlns='{MAM}' queryid='{queryid}'>{form_xml(form)}{rsm}{extra}</query>")
        if iq.get("type") != "result":
            raise QueryError(error_condition(iq))
        assert all(r.find(f"{{{MAM}}}result").get("queryid") == queryid for r in results)
        return results, iq

    def close(self) -> None:
        self.raw.send("</stream:stream>")
        self.raw.close()


class QueryError(Exception):
    pass


def form_xml(form: dict[str, str | list[str]] | None) -> str:
    if not form:
        return ""
    fields = [f"<field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"]
    for var, value in form.items():
        values = "".join(f"<value>{v}</value>" for v in ([value] if isinstance(value, str) else value))
        fields.append(f"<field var='{var}'>{values}</field>")
    return f"<x xmlns='{XDATA}' type='submit'>{''.join(fields)}</x>"


def messages(stanzas: list[etree._Element]) -> list[etree._Element]:
    return [s for s in stanzas if etree.QName(s).localname == "message"]


def error_condition(stanza: etree._Element) -> str:
    error = stanza.find(f"{{{CLIENT}}}error")
    assert error is not None, etree.tostring(stanza)
    return etree.QName(error[0]).localname


def bodies(results: list[etree._Element]) -> list[str]:
    return [r.findtext(f"{{{MAM}}}result/{{{FORWARD}}}forwarded/{{{CLIENT}}}message/{{{CLIENT}}}body") for r in results]


def result_ids(results: list[etree._Element]) -> list[str]:
    return [r.find(f"{{{MAM}}}result").get("id") for r in results]


def stamps(results: list[etree._Element]) -> list[str]:
    return [r.find(f"{{{MAM}}}result/{{{FORWARD}}}forwarded/{{{DELAY}}}delay").get("stamp") for r in results]


def rsm(fin_iq: etree._Element) -> dict[str, str | None]:
    fin = fin_iq.find(f"{{{MAM}}}fin")
    assert fin is not None
    set_ = fin.find(f"{{{RSM}}}set")
    first = set_.find(f"{{{RSM}}}first")
    return {"complete": fin.get("complete"), "first": first.text if first is not None else None,
            "index": first.get("index") if first is not None else None,
            "last": set_.findtext(f"{{{RSM}}}last"), "count": set_.findtext(f"{{{RSM}}}count")}


def stanza_ids(message: etree._Element) -> dict[str, str]:
    return {s.get("by"): s.get("id") for s in message.iterfind(f"{{{SID}}}stanza-id")}


def archived_rows(server: ServerProcess, user: str) -> int:
    with sqlite3.connect(server.data / "appliance.sqlite3") as conn:
        return conn.execute("SELECT count(*) FROM archive WHERE username = ?", (user.split("@")[0],)).fetchone()[0]


# ---- archiving and stanza ids ------------------------------------------------------------------------

def test_both_sides_archived_and_the_recipient_copy_stamped(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")
    a, b = Peer(server, alice), Peer(server, bob)
    forged = (f"<stanza-id xmlns='{SID}' by='{bob}' id='forged'/>"
              f"<stanza-id xmlns='{SID}' by='elsewhere.example' id='x'/>")
    a.send(bob, "hello bob", extra=forged)
    (got,) = b.messages(1)
    ids = stanza_ids(got)
    assert ids[bob] != "forged" and ids["elsewhere.example"] == "x"   # ours replaced, a foreign one kept
    assert len(got.findall(f"{{{SID}}}stanza-id")) == 2

    results, fin = b.query()
    assert bodies(results) == ["hello bob"] and result_ids(results) == [ids[bob]]
    assert rsm(fin) == {"complete": "true", "first": ids[bob], "index": "0", "last": ids[bob], "count": "1"}
    inner = results[0].find(f"{{{MAM}}}result/{{{FORWARD}}}forwarded/{{{CLIENT}}}message")
    assert inner.get("from") == a.full and stanza_ids(inner) == {"elsewhere.example": "x"}
    assert stamps(results)[0].endswith("Z")

    sent, _ = a.query()   # the sender's archive: its own row, with another id
    assert bodies(sent) == ["hello bob"] and result_ids(sent) != [ids[bob]]
    assert sent[0].find(f"{{{MAM}}}result/{{{FORWARD}}}forwarded/{{{CLIENT}}}message").get("to") == bob
    a.close(), b.close()


def test_what_is_not_archived(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")
    a, b = Peer(server, alice), Peer(server, bob)
    a.send(bob, "no store", extra=f"<no-store xmlns='{HINTS}'/>")
    a.send(bob, "no permanent store", extra=f"<no-permanent-store xmlns='{HINTS}'/>")
    a.send(bob, "headline", type_="headline")
    a.send(bob, "error", type_="error")
    a.send(bob, None, extra="<active xmlns='http://jabber.org/protocol/chatstates'/>")
    a.send(bob, "kept", type_="normal")
    a.ping()   # a round trip for the sender: everything it sent has been routed
    got = messages(b.ping())
    assert [m.findtext(f"{{{CLIENT}}}body") for m in got][-1] == "kept"
    assert all(not stanza_ids(m) for m in got[:-1])   # not archived, so never stamped
    assert bodies(b.query()[0]) == ["kept"] and bodies(a.query()[0]) == ["kept"]
    a.send(f"nobody@{server.domain}", "refused")   # delivery refuses it, so no archive keeps it
    (bounce,) = messages(a.ping())
    assert error_condition(bounce) == "service-unavailable" and bodies(a.query()[0]) == ["kept"]
    a.close(), b.close()


def test_to_oneself_is_archived_once(server: ServerProcess) -> None:
    (alice,) = new_users(server, "alice")
    phone, laptop = Peer(server, alice, "phone"), Peer(server, alice, "laptop")
    phone.send(laptop.full, "note to self")
    phone.ping()
    (got,) = messages(laptop.ping())
    results, _ = phone.query()
    assert bodies(results) == ["note to self"] and result_ids(results) == [stanza_ids(got)[alice]]
    phone.close(), laptop.close()


def test_disco_and_form(server: ServerProcess) -> None:
    (alice,) = new_users(server, "alice")
    a = Peer(server, alice)
    _, info = a.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", "get", to=alice)
    features = {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert {MAM, f"{MAM}#extended", SID} <= features
    _, form = a.iq(f"<query xmlns='{MAM}'/>", "get")
    fields = {f.get("var") for f in form.iter(f"{{{XDATA}}}field")}
    assert {"FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"} <= fields
    with pytest.raises(QueryError, match="feature-not-implemented"):
        a.query({"full-text-search": "x"})
    _, other = a.iq(f"<query xmlns='{MAM}'/>", to="someone@" + server.domain)
    assert other.get("type") == "error"
    a.close()


# ---- queries -----------------------------------------------------------------------------------------

def test_filters_by_with_and_time(server: ServerProcess) -> None:
    alice, bob, carol = new_users(server, "alice", "bob", "carol")
    a, b, c = Peer(server, alice), Peer(server, bob, "desk"), Peer(server, carol)
    for n in range(4):
        a.send(b.full if n % 2 else bob, f"to bob {n}")
        a.send(carol, f"to carol {n}")
    b.messages(4), c.messages(4)
    everything, _ = a.query()
    assert len(everything) == 8
    assert bodies(a.query({"with": bob})[0]) == [f"to bob {n}" for n in range(4)]
    assert bodies(a.query({"with": b.full})[0]) == ["to bob 1", "to bob 3"]   # a full JID matches exactly
    assert bodies(a.query({"with": carol})[0]) == [f"to carol {n}" for n in range(4)]

    times = stamps(everything)
    ranged, fin = a.query({"start": times[2], "end": times[5]})
    assert bodies(ranged) == bodies(everything)[2:6] and rsm(fin)["count"] == "4"
    assert bodies(a.query({"start": times[7]})[0]) == bodies(everything)[7:]
    with pytest.raises(QueryError, match="bad-request"):
        a.query({"start": "yesterday"})
    a.close(), b.close(), c.close()


def test_paging_forward_and_backward(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")
    a, b = Peer(server, alice), Peer(server, bob)
    for n in range(25):
        a.send(bob, f"m{n:02}")
    b.messages(25)
    expected = [f"m{n:02}" for n in range(25)]

    pages, after = [], ""
    while True:   # forward, by RSM <after/>
        results, fin = b.query(rsm=f"<set xmlns='{RSM}'><max>10</max>{after}</set>")
        page = rsm(fin)
        pages.append((bodies(results), page["complete"], page["index"]))
        if page["complete"] == "true":
            break
        after = f"<after>{page['last']}</after>"
    assert pages == [(expected[:10], "false", "0"), (expected[10:20], "false", "10"), (expected[20:], "true", "20")]

    pages, before = [], "<before/>"
    while True:   # backward from the last page, by RSM <before/>
        results, fin = b.query(rsm=f"<set xmlns='{RSM}'><max>10</max>{before}</set>")
        page = rsm(fin)
        pages.append((bodies(results), page["complete"], page["count"]))
        if page["complete"] == "true":
            break
        before = f"<before>{page['first']}</before>"
    assert pages == [(expected[15:], "false", "25"), (expected[5:15], "false", "25"), (expected[:5], "true", "25")]

    ids = result_ids(b.query()[0])
    assert bodies(b.query({"after-id": ids[3], "before-id": ids[7]})[0]) == expected[4:7]
    assert bodies(b.query({"ids": [ids[9], ids[2]]})[0]) == [expected[2], expected[9]]
    flipped, _ = b.query(rsm=f"<set xmlns='{RSM}'><max>3</max></set>", extra=f"<flip-page xmlns='{MAM}'/>")
    assert bodies(flipped) == expected[2::-1]
    assert rsm(b.query(rsm=f"<set xmlns='{RSM}'><max>0</max></set>")[1])["count"] == "25"
    for bad in ({"after-id": "nope"}, {"ids": ["nope"]}):
        with pytest.raises(QueryError, match="item-not-found"):
            b.query(bad)
    with pytest.raises(QueryError, match="item-not-found"):
        b.query(rsm=f"<set xmlns='{RSM}'><after>nope</after></set>")
    _, meta = b.iq(f"<metadata xmlns='{MAM}'/>", "get")
    assert meta.find(f"{{{MAM}}}metadata/{{{MAM}}}start").get("id") == ids[0]
    assert meta.find(f"{{{MAM}}}metadata/{{{MAM}}}end").get("id") == ids[-1]
    a.close(), b.close()


def test_slixmpp_pages_through_the_archive(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")

    async def scenario() -> None:
        plugins = ("xep_0030", "xep_0199", "xep_0059", "xep_0297", "xep_0313")
        a, b = Client(server, alice, plugins=plugins), Client(server, bob, plugins=plugins)
        await a.login(), await b.login()
        for n in range(12):
            a.send_message(mto=bob, mbody=f"slix {n}", mtype="chat")
        for _ in range(12):
            await b.next_message()
        got = [m["mam_result"]["forwarded"]["stanza"]["body"]
               async for m in b.plugin["xep_0313"].iterate(with_jid=alice, rsm={"max": 5})]
        assert got == [f"slix {n}" for n in range(12)]
        await a.logout(), await b.logout()

    run(scenario())


# ---- preferences ---------------------------------------------------------------------------------------

def test_preferences(server: ServerProcess) -> None:
    alice, bob, carol = new_users(server, "alice", "bob", "carol")
    a, b, c = Peer(server, alice), Peer(server, bob), Peer(server, carol)
    _, prefs = a.iq(f"<prefs xmlns='{MAM}'/>", "get")
    assert prefs.find(f"{{{MAM}}}prefs").get("default") == "always"

    _, applied = a.iq(f"<prefs xmlns='{MAM}' default='never'><always><jid>{carol}</jid></always><never/></prefs>")
    assert [j.text for j in applied.iter(f"{{{MAM}}}jid")] == [carol]
    a.send(bob, "not in alice's archive")
    a.send(carol, "in alice's archive")
    b.messages(1), c.messages(1)
    assert bodies(a.query()[0]) == ["in alice's archive"]
    assert bodies(b.query()[0]) == ["not in alice's archive"]   # bob's own preferences decide his

    a.iq(f"<prefs xmlns='{MAM}' default='roster'><always/><never><jid>{carol}/phone</jid></never></prefs>")
    a.iq(f"<query xmlns='jabber:iq:roster'><item jid='{bob}'/></query>")
    c.send(alice, "carol is not in alice's roster")
    b.send(alice, "bob is")
    a.messages(2)
    assert bodies(a.query()[0]) == ["in alice's archive", "bob is"]
    _, stored = a.iq(f"<prefs xmlns='{MAM}'/>", "get")
    assert stored.find(f"{{{MAM}}}prefs").get("default") == "roster"
    assert [j.text for j in stored.iter(f"{{{MAM}}}jid")] == [f"{carol}/phone"]
    _, bad = a.iq(f"<prefs xmlns='{MAM}' default='sometimes'/>")
    assert error_condition(bad) == "bad-request"
    a.close(), b.close(), c.close()


# ---- offline messages and the archive --------------------------------------------------------------------

def test_offline_messages_carry_the_archive_id(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")
    a = Peer(server, alice)
    a.send(bob, "while you were out")
    a.ping()
    b = Peer(server, bob, presence=False)
    b.raw.send("<presence/>")
    (offline,) = messages(b.ping())
    assert offline.find(f"{{{DELAY}}}delay") is not None
    assert result_ids(b.query()[0]) == [stanza_ids(offline)[bob]]
    a.close(), b.close()


def test_a_client_that_syncs_first_gets_no_offline_duplicates(server: ServerProcess) -> None:
    alice, bob, carol = new_users(server, "alice", "bob", "carol")
    a = Peer(server, alice)
    for n in range(3):
        a.send(bob, f"for bob {n}")
        a.send(carol, f"for carol {n}")
    a.ping()

    syncing = Peer(server, bob, "sync", presence=False)
    assert bodies(syncing.query()[0]) == [f"for bob {n}" for n in range(3)]
    a.send(bob, "after the query")   # not in what the query returned: still comes as an offline message
    a.ping()
    syncing.raw.send("<presence/>")
    got = messages(syncing.ping())
    assert [m.findtext(f"{{{CLIENT}}}body") for m in got] == ["after the query"]

    plain = Peer(server, carol, presence=False)   # presence first: offline messages as always
    plain.raw.send("<presence/>")
    got = messages(plain.ping())
    assert [m.findtext(f"{{{CLIENT}}}body") for m in got] == [f"for carol {n}" for n in range(3)]
    a.close(), syncing.close(), plain.close()


# ---- retention and account removal -------------------------------------------------------------------------

def test_retention(fresh_server: ServerProcess) -> None:
    fresh_server.settings = {"archive.retention_days": 2 / 86400}   # two seconds
    fresh_server.start()
    alice, bob = (fresh_server.add_user(name) for name in ("alice", "bob"))
    a, b = Peer(fresh_server, alice), Peer(fresh_server, bob)
    a.send(bob, "soon gone")
    b.messages(1)
    assert bodies(b.query()[0]) == ["soon gone"]
    time.sleep(2.2)
    a.send(bob, "fresh")
    b.messages(1)
    assert bodies(b.query()[0]) == ["fresh"] and bodies(a.query()[0]) == ["fresh"]
    assert archived_rows(fresh_server, alice) == 1 and archived_rows(fresh_server, bob) == 1   # deleted, not hidden
    a.close(), b.close()


def test_account_removal_deletes_the_archive(server: ServerProcess) -> None:
    alice, bob = new_users(server, "alice", "bob")
    a, b = Peer(server, alice), Peer(server, bob)
    a.send(bob, "remember me")
    b.messages(1)
    b.query()  # a query waits for the archive's pending commit: the row is on disk after it
    assert archived_rows(server, bob) == 1
    b.iq("<query xmlns='jabber:iq:register'><remove/></query>")
    # The answer is queued before the data goes (it must leave on the stream that is then closed);
    # the stream error comes after the deletion committed.
    while etree.QName(b.next()).localname != "error":
        pass
    assert archived_rows(server, bob) == 0 and archived_rows(server, alice) == 1
    a.close()
