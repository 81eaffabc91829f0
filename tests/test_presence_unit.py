"""Pure logic of RFC 6121 and XEP-0160: the Appendix A state tables, roster-set validation, priority
parsing, what offline storage keeps; and one subscription transaction on a real database."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from appliance.features import offline, presence, roster, subscription
from appliance.features.subscription import State, inbound, outbound
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID
from appliance.store import roster as store
from appliance.store import users
from appliance.store.db import Database

S = {
    "None": State(),
    "None + Pending Out": State(ask=True),
    "None + Pending In": State(pending_in=True),
    "None + Pending Out+In": State(ask=True, pending_in=True),
    "To": State(to=True),
    "To + Pending In": State(to=True, pending_in=True),
    "From": State(from_=True),
    "From + Pending Out": State(from_=True, ask=True),
    "Both": State(to=True, from_=True),
}
PRE = "pre-approved"  # §3.4.1: the state itself, with approved set
STATES = list(S)

# RFC 6121 Appendix A: new state for each existing state, in the order of STATES; None: no change.
OUTBOUND = {  # A.2, the user's server
    "subscribe": ["None + Pending Out", None, "None + Pending Out+In", None, None, None,
                  "From + Pending Out", None, None],
    "unsubscribe": [None, "None", None, "None + Pending In", "None", "None + Pending In", None, "From", "From"],
    "subscribed": [PRE, PRE, "From", "From + Pending Out", PRE, "Both", None, None, None],
    "unsubscribed": [None, None, "None", "None + Pending Out", None, "To", "None", "None + Pending Out", "To"],
}
INBOUND = {  # A.3, the contact's server
    "subscribe": ["None + Pending In", "None + Pending Out+In", None, None, "To + Pending In", None, None, None, None],
    "unsubscribe": [None, None, "None", "None + Pending Out", None, "To", "None", "None + Pending Out", "To"],
    "subscribed": [None, "To", None, "To + Pending In", None, None, None, "Both", None],
    "unsubscribed": [None, "None", None, "None + Pending In", "None", "None + Pending In", None, "From", "From"],
}


def _expected(before: str, after: str | None) -> State:
    if after is None:
        return S[before]
    if after == PRE:
        return State(**{**_fields(S[before]), "approved": True})
    return S[after]


def _fields(state: State) -> dict[str, bool]:
    return {name: getattr(state, name) for name in ("to", "from_", "ask", "pending_in", "approved")}


@pytest.mark.parametrize("kind", list(OUTBOUND))
@pytest.mark.parametrize("index", range(len(STATES)))
def test_outbound_table(kind: str, index: int) -> None:
    before = STATES[index]
    assert outbound(S[before], kind) == _expected(before, OUTBOUND[kind][index]), before


@pytest.mark.parametrize("kind", list(INBOUND))
@pytest.mark.parametrize("index", range(len(STATES)))
def test_inbound_table(kind: str, index: int) -> None:
    before = STATES[index]
    assert inbound(S[before], kind) == _expected(before, INBOUND[kind][index]), before


def test_pre_approval_answers_the_later_request() -> None:
    approved = outbound(S["None"], "subscribed")
    assert inbound(approved, "subscribe") == S["From"]  # §3.4.2: no pending request, approval used up
    assert outbound(approved, "unsubscribed") == S["None"]  # §3.4.1: withdrawn


def test_subscription_attribute() -> None:
    assert [S[n].subscription for n in ("None", "To", "From", "Both")] == ["none", "to", "from", "both"]


# ---- one transaction on a real database --------------------------------------------------------------

@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database.open(tmp_path / "db.sqlite3")
    for name in ("alice", "bob"):
        database.write_sync(users.insert_user, name, {})
    yield database
    database.close()


def test_request_is_kept_outside_the_roster_until_answered(db: Database) -> None:
    request = b"<presence xmlns='jabber:client' type='subscribe' from='alice@d' to='bob@d'/>"
    change = db.write_sync(subscription.transition, "bob", "alice@d", "subscribe", False, request, 10)
    assert change.after == S["None + Pending In"] and change.version is None
    assert db.read(store.get_item, "bob", "alice@d") is None
    assert db.read(store.pending_in, "bob") == [("alice@d", request)]
    change = db.write_sync(subscription.transition, "bob", "alice@d", "subscribed", True, None, 10)
    assert change.after == S["From"] and change.version is not None
    assert db.read(store.get_item, "bob", "alice@d").subscription == "from"
    assert db.read(store.pending_in, "bob") == []


def test_a_full_roster_refuses_new_contacts(db: Database) -> None:
    db.write_sync(store.set_item, "alice", store.RosterItem("carol@d"))
    with pytest.raises(StanzaError) as caught:
        db.write_sync(subscription.transition, "alice", "bob@d", "subscribe", True, None, 1)
    assert caught.value.condition == "resource-constraint"
    assert db.read(store.get_item, "alice", "bob@d") is None


# ---- roster set validation (§2.3.3) -------------------------------------------------------------------------

ME = JID.parse("alice@d/phone")


def _query(items: str) -> etree._Element:
    return etree.fromstring(f"<query xmlns='jabber:iq:roster'>{items}</query>")


@pytest.mark.parametrize("items, condition", [
    ("", "bad-request"),
    ("<item jid='a@d'/><item jid='b@d'/>", "bad-request"),
    ("<item jid='alice@d'/>", "not-allowed"),
    ("<item jid='a@@d'/>", "jid-malformed"),
    ("<item jid='a@d/res'/>", "bad-request"),
    ("<item jid='a@d'><group>x</group><group>x</group></item>", "bad-request"),
    ("<item jid='a@d'><group/></item>", "not-acceptable"),
    (f"<item jid='a@d' name='{'n' * 1024}'/>", "not-acceptable"),
])
def test_roster_set_refusals(items: str, condition: str) -> None:
    with pytest.raises(StanzaError) as caught:
        roster.parse_set(_query(items), ME)
    assert caught.value.condition == condition


def test_roster_set_ignores_subscription_from_the_client() -> None:
    request = roster.parse_set(_query("<item jid='B@d' subscription='both' name='B'><group>g</group></item>"), ME)
    assert (str(request.contact), request.name, request.groups, request.remove) == ("b@d", "B", ["g"], False)
    assert roster.parse_set(_query("<item jid='b@d' subscription='remove'/>"), ME).remove


def test_roster_item_element() -> None:
    item = store.RosterItem("b@d", "Bob", "none", ask=True, approved=True, groups=["g"])
    xml = etree.tostring(roster.item_element(item, "b@d")).decode()
    assert "ask=\"subscribe\"" in xml and "approved=\"true\"" in xml and "<group>g</group>" in xml.replace("ns0:", "")
    assert roster.item_element(None, "b@d").get("subscription") == "remove"


# ---- presence priority and offline storage ------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [(None, 0), ("5", 5), (" -1 ", -1), ("999", 127), ("-999", -128), ("x", 0)])
def test_priority(text: str | None, value: int) -> None:
    el = etree.Element("{jabber:client}presence")
    if text is not None:
        etree.SubElement(el, "{jabber:client}priority").text = text
    assert presence.priority_of(el) == value


@pytest.mark.parametrize("payload, kept", [
    ("<body>hi</body>", True),
    ("<body>  </body>", False),
    ("<subject>topic</subject>", True),
    ("<composing xmlns='http://jabber.org/protocol/chatstates'/>", False),
    ("<body>hi</body><no-store xmlns='urn:xmpp:hints'/>", False),
    ("<received xmlns='urn:xmpp:receipts' id='1'/>", True),
    ("<thread>t</thread>", False),
])
def test_what_offline_storage_keeps(payload: str, kept: bool) -> None:
    el = etree.fromstring(f"<message xmlns='jabber:client' to='b@d' type='chat'>{payload}</message>")
    assert offline.worth_keeping(el) is kept


def test_delay_stamp_is_added_once() -> None:
    """A stored row gets its <delay/> when read back; a message stored before keeps its first stamp."""
    row = b"<message xmlns='jabber:client' to='b@d'><body>hi</body></message>"
    once = offline.stored_message(row, 0.0, "d")
    twice = offline.stamp_delay(once, "d", 3600.0)
    delays = twice.findall("{urn:xmpp:delay}delay")
    assert [(d.get("from"), d.get("stamp")) for d in delays] == [("d", "1970-01-01T00:00:00.000000Z")]
