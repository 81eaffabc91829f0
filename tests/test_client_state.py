"""The client's local state (appliance/client/state.py) on real SQLite files."""

from __future__ import annotations

import stat

from lxml import etree

from appliance.client.state import ClientState, RosterItem, roster_items
from appliance.client.stream import Account, SmState

ANNA = Account("anna@chat.local", "s3cret", "192.168.1.2", 5222, "ab" * 32, "phone")


def test_account_round_trip_survives_reopening(tmp_path):
    state = ClientState(tmp_path / "c")
    assert state.load_account() is None
    state.save_account(ANNA)
    state.close()
    assert ClientState(tmp_path / "c").load_account() == ANNA


def test_database_is_private(tmp_path):
    state = ClientState(tmp_path / "c")
    state.save_account(ANNA)
    for path in (tmp_path / "c").glob("client.sqlite*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700


def test_clear_credentials_keeps_history_and_drops_session(tmp_path):
    state = ClientState(tmp_path / "c")
    state.save_account(ANNA)
    state.save_sm(SmState("sm-1", 7, [b"<message/>", b"<presence/>"], 3, "anna@chat.local/phone"))
    state.add_message("bob@chat.local", "out", "hello", 1000.0, "id-1")
    state.clear_credentials()
    assert state.load_account() is None and state.account_jid() == "anna@chat.local"
    assert state.load_sm() is None
    [message] = state.history("bob@chat.local")
    assert (message.direction, message.body, message.stanza_id) == ("out", "hello", "id-1")


def test_sm_state_round_trip_keeps_order(tmp_path):
    state = ClientState(tmp_path / "c")
    sm = SmState("sm-1", 7, [b"<message id='1'/>", b"<message id='2'/>"], 3, "anna@chat.local/phone")
    state.save_sm(sm)
    assert ClientState(tmp_path / "c").load_sm() == sm
    state.save_sm(None)
    assert state.load_sm() is None


def test_history_is_per_peer_newest_last_and_limited(tmp_path):
    state = ClientState(tmp_path / "c")
    for i in range(5):
        state.add_message("bob@chat.local", "in" if i % 2 else "out", f"m{i}", 1000.0 + i, None)
    state.add_message("cy@chat.local", "in", "other", 2000.0, None)
    assert [m.body for m in state.history("bob@chat.local", 3)] == ["m2", "m3", "m4"]
    assert [m.body for m in state.history("cy@chat.local")] == ["other"]


def test_roster_from_a_roster_query_replaces_the_old_one(tmp_path):
    state = ClientState(tmp_path / "c")
    state.set_roster([RosterItem("old@chat.local")])
    query = etree.fromstring(
        "<query xmlns='jabber:iq:roster'><item jid='bob@chat.local' name='Bob' subscription='both'>"
        "<group>Family</group></item><item jid='cy@chat.local' subscription='to'/></query>")
    state.set_roster(roster_items(query))
    assert state.roster() == [RosterItem("bob@chat.local", "Bob", "both", ("Family",)),
                              RosterItem("cy@chat.local", None, "to", ())]


def test_media_paths_stay_in_the_media_directory(tmp_path):
    state = ClientState(tmp_path / "c")
    assert state.media_path("../../etc/passwd") == tmp_path / "c" / "media" / "passwd"
    assert state.media_path("photo.jpg").parent.is_dir()


def test_acknowledgement_drops_the_oldest_unacked_stanzas_across_the_wrap():
    sm = SmState("sm-1", 0, [b"<a1/>", b"<a2/>", b"<a3/>"], acked=2 ** 32 - 1)
    sm.acknowledge(1)  # h wraps at 2^32 (XEP-0198 §4): 2^32 - 1 -> 1 acknowledges two
    assert sm.outbound_unacked == [b"<a3/>"] and sm.acked == 1
