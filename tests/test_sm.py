"""XEP-0198 stream management against the real server: acks, hibernation, resumption, and what
the server acknowledged surviving SIGKILL. Raw XML, because the point is exact control of acks."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import time
from typing import Iterator

import pytest

from tests.harness import ServerProcess
from tests.raw import RawClient

SM = "urn:xmpp:sm:3"
BODY = re.compile(rb"<body>([^<]*)</body>")


def enable(client: RawClient, resume: bool = True) -> bytes:
    resume_attr = " resume='true'" if resume else ""
    client.send(f"<enable xmlns='{SM}'{resume_attr}/>")
    client.read_until(b"<enabled", b"<failed")
    return b"<enabled" + client.read_until(b"/>")


def resumption_id(enabled: bytes) -> str:
    return re.search(rb"id='([^']+)'", enabled).group(1).decode()


def bodies(data: bytes) -> list[str]:
    return [b.decode() for b in BODY.findall(data)]


def read_messages(client: RawClient, count: int, timeout: float = 10) -> list[str]:
    got: list[str] = []
    while len(got) < count:
        got += bodies(client.read_until(b"</message>", timeout=timeout))
    return got


def send_messages(client: RawClient, to: str, texts: list[str]) -> None:
    for text in texts:
        client.send(f"<message to='{to}' type='chat'><body>{text}</body></message>")


def acked_by_server(client: RawClient) -> int:
    """Ask the server how many of our stanzas it has handled (durably, where that matters)."""
    client.send(f"<r xmlns='{SM}'/>")
    answer = client.read_until(b"h='")
    answer += client.read_until(b"/>")
    return int(re.search(rb"<a xmlns='urn:xmpp:sm:3' h='(\d+)'/>", answer).group(1))


def cut(client: RawClient) -> None:
    """The link dies: no stream close, no TLS close, just gone."""
    client.sock.close()


@pytest.fixture(scope="module")
def sm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("sm"), settings={
        "stream_management.resume_timeout": 30, "stream_management.request_after": 3})
    proc.start()
    yield proc
    proc.stop()


_names = iter(range(10_000))


def pair(server: ServerProcess) -> tuple[str, str]:
    n = next(_names)
    return server.add_user(f"sma{n}"), server.add_user(f"smb{n}")


def online(server: ServerProcess, jid: str, resource: str = "phone") -> RawClient:
    client = RawClient(server).open()
    client.login(jid.split("@")[0], resource=resource)
    client.send("<presence/>")
    return client


def test_enable_and_acks_both_ways(sm_server: ServerProcess) -> None:
    a_jid, b_jid = pair(sm_server)
    a, b = online(sm_server, a_jid), online(sm_server, b_jid)
    enabled = enable(b)
    assert b"resume='true'" in enabled and b"max='30'" in enabled
    assert acked_by_server(b) == 0
    b.send(f"<iq type='get' id='p1' to='{sm_server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    b.read_until(b'id="p1"')
    assert acked_by_server(b) == 1
    b.send(f"<a xmlns='{SM}' h='1'/>")  # the ping's answer was the first stanza the server sent
    send_messages(a, b_jid, ["one", "two", "three"])
    data = b.read_until(f"<r xmlns='{SM}'/>".encode())  # request_after = 3: the server asks
    assert bodies(data) == ["one", "two", "three"]
    b.send(f"<a xmlns='{SM}' h='4'/>")
    a.close()
    b.close()


def test_resume_after_a_cut_gets_exactly_the_unacked_in_order(sm_server: ServerProcess) -> None:
    a_jid, b_jid = pair(sm_server)
    a, b = online(sm_server, a_jid), online(sm_server, b_jid)
    enable(a)
    previd = resumption_id(enable(b))
    send_messages(a, b_jid, ["m1", "m2"])
    assert read_messages(b, 2) == ["m1", "m2"]
    b.send(f"<a xmlns='{SM}' h='1'/>")  # the phone confirms only m1, then its link dies
    time.sleep(0.2)
    cut(b)
    time.sleep(0.3)
    send_messages(a, b_jid, ["m3", "m4"])  # arrive while the session hibernates
    assert acked_by_server(a) == 4

    again = RawClient(sm_server).open()
    assert b"<success" in again.authenticate(b_jid.split("@")[0])
    again.header()
    again.send(f"<resume xmlns='{SM}' previd='{previd}' h='1'/>")
    assert b"<resumed" in again.read_until(b"/>")
    assert read_messages(again, 3) == ["m2", "m3", "m4"]
    send_messages(a, b_jid, ["m5"])  # and the resumed session is simply live
    assert read_messages(again, 1) == ["m5"]
    again.close()
    a.close()


def test_what_a_cut_link_had_sent_counts_in_the_resumed_h(sm_server: ServerProcess) -> None:
    """The reader does not wait for a stanza's commit before reading on; the count catches up
    before the session hibernates, so <resumed h=.../> includes messages sent just before a cut
    (the phone would otherwise send them again: duplicates)."""
    a_jid, b_jid = pair(sm_server)
    a, b = online(sm_server, a_jid), online(sm_server, b_jid)
    previd = resumption_id(enable(a))
    send_messages(a, b_jid, ["c1", "c2"])
    cut(a)  # no <r/>: nothing asked the server to settle the count before the link died
    assert read_messages(b, 2) == ["c1", "c2"]
    time.sleep(0.3)
    again = RawClient(sm_server).open()
    assert b"<success" in again.authenticate(a_jid.split("@")[0])
    again.header()
    again.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    resumed = again.read_until(b"/>")
    assert b"<resumed" in resumed and b"h='2'" in resumed, resumed
    again.close()
    b.close()


def test_resume_takes_over_a_connection_not_yet_known_dead(sm_server: ServerProcess) -> None:
    a_jid, b_jid = pair(sm_server)
    a, b = online(sm_server, a_jid), online(sm_server, b_jid)
    previd = resumption_id(enable(b))
    send_messages(a, b_jid, ["x1"])
    assert read_messages(b, 1) == ["x1"]  # never acked; the old connection stays open
    again = RawClient(sm_server).open()
    again.authenticate(b_jid.split("@")[0])
    again.header()
    again.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    assert b"<resumed" in again.read_until(b"/>")
    assert read_messages(again, 1) == ["x1"]
    assert b"x1" not in b.read_to_close()  # the old connection is closed, nothing more on it
    a.close()
    again.close()


def test_unknown_resumption_fails_and_bind_still_works(sm_server: ServerProcess) -> None:
    _, b_jid = pair(sm_server)
    client = RawClient(sm_server).open()
    client.authenticate(b_jid.split("@")[0])
    client.header()
    client.send(f"<resume xmlns='{SM}' previd='nonsense' h='0'/>")
    assert b"item-not-found" in client.read_until(b"</failed>")
    client.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>fresh</resource></bind></iq>")
    assert b"/fresh</jid>" in client.read_until(b"</iq>")
    client.close()


def test_someone_elses_session_cannot_be_resumed(sm_server: ServerProcess) -> None:
    a_jid, b_jid = pair(sm_server)
    b = online(sm_server, b_jid)
    previd = resumption_id(enable(b))
    thief = RawClient(sm_server).open()
    thief.authenticate(a_jid.split("@")[0])
    thief.header()
    thief.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    assert b"item-not-found" in thief.read_until(b"</failed>")
    thief.close()
    b.close()


def test_stray_acks_before_stream_management_are_ignored(sm_server: ServerProcess) -> None:
    """A phone's ack timer outlives its lost stream: on the next connection its <r/> or <a/> can
    come before login, or after bind before <enable/>. No SM there: ignored, the login goes on
    (a stream error would cost a phone on GPRS a whole new login)."""
    _, b_jid = pair(sm_server)
    stray = f"<r xmlns='{SM}'/><a xmlns='{SM}' h='3'/>"
    client = RawClient(sm_server).open()
    client.send(stray)  # before SASL
    assert b"<success" in client.authenticate(b_jid.split("@")[0])
    client.header()
    client.send(stray)  # authenticated, not yet bound
    client.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert b"<jid>" in client.read_until(b"</iq>")
    client.send(stray)  # bound, stream management never enabled
    client.send(f"<iq type='get' id='p1' to='{sm_server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    answer = client.read_until(b'id="p1"', b"</stream:stream>")
    assert b"<failed" not in answer and b"stream:error" not in answer and b'id="p1"' in answer
    assert b"<enabled" in enable(client)  # and stream management can still be enabled, from zero
    assert acked_by_server(client) == 0
    client.close()


def server_stats(server: ServerProcess) -> dict:
    """The server's counters (SIGUSR1 logs a `stats {json}` line)."""
    seen = server.log_text().count("stats {")
    server.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while server.log_text().count("stats {") == seen:
        assert time.monotonic() < deadline, "no stats line after SIGUSR1"
        time.sleep(0.05)
    return json.loads(server.log_text().rsplit("stats ", 1)[1].splitlines()[0])


def test_a_burst_in_one_read_shares_its_commits_and_is_all_acked(sm_server: ServerProcess) -> None:
    """A phone resending its queue after a resume: the stanzas of one read are settled together
    (one commit, not one each, which under the commit delay would cost ~10 ms per stanza)."""
    a_jid, b_jid = pair(sm_server)
    a, b = online(sm_server, a_jid), online(sm_server, b_jid)
    enable(a)
    commits = server_stats(sm_server)["db_commits"]
    texts = [f"burst {n}" for n in range(100)]
    a.send("".join(f"<message to='{b_jid}' type='chat'><body>{t}</body></message>" for t in texts))
    assert acked_by_server(a) == 100
    assert read_messages(b, 100) == texts
    assert server_stats(sm_server)["db_commits"] - commits < 10
    a.close()
    b.close()


def test_an_ack_request_waiting_for_the_disk_does_not_stop_the_reader(sm_server: ServerProcess) -> None:
    """A phone asks for an ack after each message: the <a/> waits for the message's commit, but
    the stanzas after the <r/> are handled meanwhile (the ping is answered first), and each <r/>
    gets its own answer, in order, counting exactly the stanzas before it."""
    a_jid, b_jid = pair(sm_server)
    a, b = online(sm_server, a_jid), online(sm_server, b_jid)
    enable(a)
    before = acked_by_server(a)
    ping = f"<iq type='get' id='p-ack' to='{sm_server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>"
    a.send(f"<message to='{b_jid}' type='chat'><body>asked</body></message><r xmlns='{SM}'/>"
           f"{ping}<r xmlns='{SM}'/>")
    data = a.read_until(b"<a xmlns='urn:xmpp:sm:3' h='")
    data += a.read_until(b"/>")
    data += a.read_until(b"<a xmlns='urn:xmpp:sm:3' h='")
    data += a.read_until(b"/>")
    assert data.index(b'id="p-ack"') < data.index(b"<a xmlns")
    assert re.findall(rb"<a xmlns='urn:xmpp:sm:3' h='(\d+)'/>", data) == [
        str(before + 1).encode(), str(before + 2).encode()]
    assert read_messages(b, 1) == ["asked"]
    a.close()
    b.close()


def test_ack_for_more_than_was_sent_is_a_stream_error(sm_server: ServerProcess) -> None:
    _, b_jid = pair(sm_server)
    b = online(sm_server, b_jid)
    enable(b)
    b.send(f"<a xmlns='{SM}' h='99'/>")
    assert b"undefined-condition" in b.read_to_close()


def test_hibernated_session_stays_available_to_contacts(sm_server: ServerProcess) -> None:
    a_jid, b_jid = pair(sm_server)
    a, b = online(sm_server, a_jid), online(sm_server, b_jid)
    for me, other in ((a, b_jid), (b, a_jid)):
        me.send(f"<presence to='{other}' type='subscribe'/>")
        time.sleep(0.2)
    for me, other in ((b, a_jid), (a, b_jid)):
        me.send(f"<presence to='{other}' type='subscribed'/>")
    time.sleep(0.5)
    a.read_until(b"</presence>", b"/>")  # drain what subscription produced
    enable(b)
    cut(b)
    time.sleep(1.0)
    a.buffer = b""
    a.send(f"<iq type='get' id='after' to='{sm_server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    seen = a.read_until(b'id="after"')
    assert b'type="unavailable"' not in seen  # a phone in a tunnel is not offline yet
    a.close()


@pytest.mark.parametrize("acked", [0, 2])
def test_hibernation_timeout_stores_unacked_messages_once(fresh_server: ServerProcess, acked: int) -> None:
    fresh_server.settings = {"stream_management.resume_timeout": 1}
    fresh_server.start()
    a_jid, b_jid = fresh_server.add_user("hib_a"), fresh_server.add_user("hib_b")
    a, b = online(fresh_server, a_jid), online(fresh_server, b_jid)
    enable(b)
    send_messages(a, b_jid, ["h1", "h2", "h3"])
    assert read_messages(b, 3) == ["h1", "h2", "h3"]
    b.send(f"<a xmlns='{SM}' h='{acked}'/>")
    time.sleep(0.2)
    cut(b)
    assert fresh_server.logged("not resumed in time", timeout=10)
    later = online(fresh_server, b_jid, resource="later")
    expected = ["h1", "h2", "h3"][acked:]
    data = b""
    for _ in expected:
        data += later.read_until(b"</message>")
    assert bodies(data) == expected
    assert data.count(b"urn:xmpp:delay") == len(expected)
    later.send(f"<iq type='get' id='end' to='{fresh_server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert bodies(later.read_until(b'id="end"')) == []  # and nothing twice
    a.close()
    later.close()


def _offline_ids_ever_used(server: ServerProcess) -> int:
    """The highest durable-copy id ever inserted (AUTOINCREMENT keeps it after a delete)."""
    with sqlite3.connect(f"file:{server.data / 'appliance.sqlite3'}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'offline_messages'").fetchone()
        return row[0] if row else 0


def _offline_rows(server: ServerProcess, user: str) -> int:
    with sqlite3.connect(f"file:{server.data / 'appliance.sqlite3'}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM offline_messages WHERE username = ?", (user,)).fetchone()[0]


def _archived(server: ServerProcess, user: str) -> int:
    with sqlite3.connect(f"file:{server.data / 'appliance.sqlite3'}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM archive WHERE username = ?", (user,)).fetchone()[0]


def test_a_message_confirmed_before_its_commit_costs_no_durable_copy(fresh_server: ServerProcess) -> None:
    """The durable copy of a message to a live session rides with a lazy commit; when the
    recipient acks the message first, the insert is withdrawn and never reaches the disk (nor
    does a delete). A message the recipient has not acked by then is written as before."""
    fresh_server.start()
    a_jid, b_jid = fresh_server.add_user("wd_a"), fresh_server.add_user("wd_b")
    a, b = online(fresh_server, a_jid), online(fresh_server, b_jid)
    enable(b)
    b.send(f"<iq type='get' id='ready' to='{fresh_server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    b.read_until(b'id="ready"')
    time.sleep(1.2)  # lazy commits of the logins are over: the message's write starts a new period
    used = _offline_ids_ever_used(fresh_server)
    send_messages(a, b_jid, ["quick"])
    assert read_messages(b, 1) == ["quick"]
    b.send(f"<a xmlns='{SM}' h='2'/>")  # the ping's answer and the message, well within 0.5 s
    b.send(f"<iq type='get' id='acked' to='{fresh_server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    b.read_until(b'id="acked"')  # stanzas of a stream are handled in order: the ack is done
    time.sleep(1.0)  # the lazy commit has run: it wrote the archive rows, not the copy
    assert _archived(fresh_server, "wd_b") == 1
    assert _offline_ids_ever_used(fresh_server) == used
    enable(a)
    send_messages(a, b_jid, ["unconfirmed"])
    assert read_messages(b, 1) == ["unconfirmed"]
    assert acked_by_server(a) == 1  # waits for the commit that holds the message
    assert _offline_ids_ever_used(fresh_server) == used + 2  # the withdrawn id is not reused
    assert _offline_rows(fresh_server, "wd_b") == 1           # "unconfirmed" is on disk
    a.close()
    b.close()


def test_what_the_server_acked_survives_sigkill(fresh_server: ServerProcess) -> None:
    """The recipient is online but has not confirmed; the sender has the server's ack; kill -9."""
    fresh_server.start()
    a_jid, b_jid = fresh_server.add_user("kill_a"), fresh_server.add_user("kill_b")
    a, b = online(fresh_server, a_jid), online(fresh_server, b_jid)
    enable(a)
    enable(b)
    texts = [f"k{n}" for n in range(10)]
    send_messages(a, b_jid, texts)
    assert acked_by_server(a) == 10
    assert fresh_server.stop(signal.SIGKILL) == -signal.SIGKILL
    fresh_server.start()
    later = online(fresh_server, b_jid, resource="after-crash")
    assert read_messages(later, 10) == texts
    later.close()


def test_a_dead_link_is_found_by_ping_and_the_session_hibernates(fresh_server: ServerProcess) -> None:
    """The phone's link stalls without any TCP signal: the server's ping goes unanswered, and the
    session is hibernated (not ended) within ping_interval + ping_timeout."""
    fresh_server.settings = {"keepalive.ping_interval": 1, "keepalive.ping_timeout": 1}
    fresh_server.start()
    b_jid = fresh_server.add_user("stalled")
    b = online(fresh_server, b_jid)
    previd = resumption_id(enable(b))
    started = time.monotonic()
    assert fresh_server.logged("no answer to ping", timeout=10)
    assert fresh_server.logged("link lost; session kept", timeout=5)
    assert time.monotonic() - started < 6
    again = RawClient(fresh_server).open()
    again.authenticate("stalled")
    again.header()
    again.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    assert b"<resumed" in again.read_until(b"/>")
    again.close()
