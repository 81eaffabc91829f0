"""The client runner (appliance/client/runner.py) against the real server: online with the three
activities, the persisted outbox, coming back by itself after the server restarts (following the
documented back-off schedule), and the not-authorized rule."""

from __future__ import annotations

import random
from pathlib import Path
from typing import AsyncIterator

import pytest
import trio
from lxml import etree

from appliance.client.backoff import Backoff
from appliance.client.runner import ClientRunner, Status, StatusChange
from appliance.client.state import ClientState
from appliance.client.stream import AuthRefused, connect
from appliance.proto import ns
from appliance.proto.stanza import Element
from tests.harness import ServerProcess
from tests.test_client_stream import account, chat, login, next_message


class Watched:
    """A runner with everything it reports recorded."""

    def __init__(self, server: ServerProcess, data: Path, name: str, **options: object) -> None:
        self.state = ClientState(data)
        self.state.save_account(account(server, name))
        self.changes: list[tuple[float, StatusChange]] = []
        self.stanzas: list[Element] = []
        self.runner = ClientRunner(self.state, on_stanza=self.stanzas.append, on_status=self._changed,
                                   cafile=str(server.cert), rng=random.Random(7), **options)
        self._news = trio.Event()

    def _changed(self, change: StatusChange) -> None:
        self.changes.append((trio.current_time(), change))
        self._news.set()
        self._news = trio.Event()

    async def until(self, status: Status, timeout: float = 15) -> StatusChange:
        """The next change to `status` from now on."""
        seen = len(self.changes)
        with trio.fail_after(timeout):
            while True:
                for _, change in self.changes[seen:]:
                    if change.status == status:
                        return change
                seen = len(self.changes)
                await self._news.wait()

    def bodies(self) -> list[str]:
        return [s.findtext(f"{{{ns.CLIENT}}}body") or "" for s in self.stanzas
                if etree.QName(s).localname == "message"]


async def until(condition: object, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.05)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def test_without_credentials_the_runner_needs_pairing_at_once(tmp_path: Path) -> None:
    runner = ClientRunner(ClientState(tmp_path / "client"), on_stanza=print)
    with trio.fail_after(1):
        assert await runner.run() == Status.NEEDS_PAIRING
    assert runner.attempts == [] and runner.status == Status.NEEDS_PAIRING


async def test_online_it_sends_from_the_outbox_and_receives(server: ServerProcess, tmp_path: Path,
                                                            nursery: trio.Nursery) -> None:
    amy, ben = server.add_user("amy"), server.add_user("ben")
    client = Watched(server, tmp_path / "amy", "amy")
    nursery.start_soon(client.runner.run)
    online = await client.until(Status.ONLINE)
    assert not online.resumed
    other = await login(server, "ben")
    await client.runner.send_message(ben, "hello ben")
    assert (await next_message(other)).findtext(f"{{{ns.CLIENT}}}body") == "hello ben"
    await until(lambda: client.runner.outbox.pending() == [])   # acknowledged: gone from the queue
    await other.send(chat(amy, "hello amy"))
    await until(lambda: client.bodies() == ["hello amy"])
    history = [(m.direction, m.body) for m in client.state.history(ben)]
    assert history == [("out", "hello ben"), ("in", "hello amy")]
    await other.aclose()


def waits(changes: list[tuple[float, StatusChange]]) -> list[tuple[float, float]]:
    """(time, delay) of each WAITING change."""
    return [(t, c.delay or 0.0) for t, c in changes if c.status == Status.WAITING]


async def test_it_comes_back_after_a_server_restart(fresh_server: ServerProcess, tmp_path: Path,
                                                    nursery: trio.Nursery) -> None:
    server = fresh_server.start()
    cleo, dan = server.add_user("cleo"), server.add_user("dan")
    backoff = Backoff(initial=1.5)  # attempts 0, 1.5, 4.5, 10.5 s after the loss: the restart is in between
    client = Watched(server, tmp_path / "cleo", "cleo", backoff=backoff)
    nursery.start_soon(client.runner.run)
    await client.until(Status.ONLINE)
    mark = len(client.changes)
    await trio.to_thread.run_sync(server.stop)
    await client.until(Status.WAITING)
    await client.runner.send_message(dan, "queued while the server was down")
    await trio.sleep(5)
    await trio.to_thread.run_sync(server.start)
    other = await login(server, "dan")
    await other.send(chat(cleo, "sent while cleo was away"))
    assert client.runner.status != Status.ONLINE, "came back before the message could be stored"

    back = await client.until(Status.ONLINE, timeout=20)
    assert not back.resumed   # a restarted server has no session to resume
    assert (await next_message(other)).findtext(f"{{{ns.CLIENT}}}body") == "queued while the server was down"
    await until(lambda: client.bodies() == ["sent while cleo was away"])
    await until(lambda: client.runner.outbox.pending() == [])

    # The schedule: each wait as documented (within jitter), and each attempt when its wait ended.
    schedule = waits(client.changes[mark:])
    attempts = [a for a in client.runner.attempts if a >= schedule[0][0]]
    assert len(schedule) == len(attempts) >= 3
    for n, (when, delay) in enumerate(schedule):
        low, high = backoff.bounds(n)
        assert low <= delay <= high, (n, delay)
        assert delay <= attempts[n] - when < delay + 0.5, (n, delay, attempts[n] - when)
    await other.aclose()


async def test_not_authorized_clears_the_password_and_stops(server: ServerProcess, tmp_path: Path,
                                                            nursery: trio.Nursery) -> None:
    server.add_user("eve")
    client = Watched(server, tmp_path / "eve", "eve")
    done = trio.Event()

    async def run() -> None:
        await client.runner.run()
        done.set()

    nursery.start_soon(run)
    await client.until(Status.ONLINE)
    secret = tmp_path / "new-password"
    secret.write_text("a different password\n")
    changed = server.cli("user", "passwd", "eve", "--password-file", str(secret))
    assert changed.returncode == 0, changed.stderr
    failures = "failed to authenticate as eve (not-authorized)"
    assert failures not in server.log_text()
    assert client.runner.stream is not None
    await client.runner.stream.abort()    # the link drops: the runner logs in again, with the old password

    needs = await client.until(Status.NEEDS_PAIRING)
    assert "not-authorized" in needs.reason
    with trio.fail_after(1):
        await done.wait()                 # run() returned: no retry loop
    assert client.state.load_account() is None
    assert client.state.account_jid() == f"eve@{server.domain}"
    attempts = len(client.runner.attempts)
    await trio.sleep(3)
    assert len(client.runner.attempts) == attempts == 2
    assert server.log_text().count(failures) == 1
    assert client.runner.status == Status.NEEDS_PAIRING


async def test_the_outbox_survives_a_restart_of_the_client(server: ServerProcess, tmp_path: Path,
                                                           nursery: trio.Nursery) -> None:
    """Queued by a client that never got online (and was then closed), sent by the next one."""
    server.add_user("fay")
    gus = server.add_user("gus")
    first = Watched(server, tmp_path / "fay", "fay")
    await first.runner.send_message(gus, "written before a restart")
    first.state.close()
    other = await login(server, "gus")
    again = Watched(server, tmp_path / "fay", "fay")
    nursery.start_soon(again.runner.run)
    assert (await next_message(other)).findtext(f"{{{ns.CLIENT}}}body") == "written before a restart"
    await until(lambda: again.runner.outbox.pending() == [])
    with trio.move_on_after(1):
        extra = await next_message(other, timeout=5)
        pytest.fail(f"sent twice: {etree.tostring(extra)!r}")
    await other.aclose()


async def test_a_message_sent_again_is_shown_once(server: ServerProcess, tmp_path: Path,
                                                  nursery: trio.Nursery) -> None:
    """A sender whose session could not be resumed sends again what was never acknowledged, which
    may have arrived: the same id from the same sender counts once."""
    hal = server.add_user("hal")
    server.add_user("ida")
    client = Watched(server, tmp_path / "hal", "hal")
    nursery.start_soon(client.runner.run)
    await client.until(Status.ONLINE)
    other = await login(server, "ida")
    for body, stanza_id in (("once", "m1"), ("once", "m1"), ("again, new id", "m2")):
        message = chat(hal, body)
        message.set("id", stanza_id)
        await other.send(message)
    await until(lambda: len(client.bodies()) >= 2)
    await trio.sleep(0.5)
    assert client.bodies() == ["once", "again, new id"]
    assert [m.body for m in client.state.history(f"ida@{server.domain}")] == ["once", "again, new id"]
    await other.aclose()


async def test_a_temporary_refusal_backs_off_and_retries(fresh_server: ServerProcess, tmp_path: Path,
                                                         nursery: trio.Nursery) -> None:
    """temporary-auth-failure (here: the server's login throttling after a wrong password) is not
    the end: the runner backs off and logs in once the server lets it."""
    fresh_server.settings = {"limits.login_failures_per_account": 1, "limits.login_failure_window": 3.0}
    server = fresh_server.start()
    server.add_user("jo")
    with pytest.raises(AuthRefused) as wrong:
        await connect(account(server, "jo", "a wrong password"), cafile=str(server.cert), timeout=10)
    assert wrong.value.condition == "not-authorized"
    client = Watched(server, tmp_path / "jo", "jo")
    nursery.start_soon(client.runner.run)
    refused = await client.until(Status.WAITING)
    assert "temporary-auth-failure" in refused.reason
    await client.until(Status.ONLINE, timeout=15)
    assert client.state.load_account() is not None
    assert len(client.runner.attempts) >= 2
    assert Status.NEEDS_PAIRING not in {change.status for _, change in client.changes}
