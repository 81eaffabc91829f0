"""Stream management over a real bad link (tests/netem.py): a phone in its own network namespace,
800 ms ± 400 ms each way, 10 % loss, and a link that goes dead several times for longer than TCP
keeps trying. Every message arrives exactly once, in order per sender."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.bad_link_run import collect, phone_and_desk, received_from, server_beside
from tests.netem import bad_link

pytestmark = pytest.mark.long_running


def test_flapping_bad_link_every_message_exactly_once_in_order(tmp_path: Path) -> None:
    count, cuts, cut_seconds = 150, 3, 20
    with bad_link(seed=7) as link:
        server = server_beside(link, tmp_path / "appliance")
        phone_events: list[dict[str, Any]] = []
        desk_events: list[dict[str, Any]] = []
        try:
            link.shape(800, 400, 10)
            (phone, phone_lines, _), (desk, desk_lines, desk_proc) = phone_and_desk(
                link, server, count, interval=0.4, timeout=420)
            phone_lines.wait_for("online", 90)
            readers = [collect(phone_lines, 430, phone_events), collect(desk_lines, 430, desk_events)]
            for _ in range(cuts):
                time.sleep(15)
                link.cut()
                time.sleep(cut_seconds)
                link.restore()
            for reader in readers:
                reader.join(440)
        finally:
            if desk_proc.poll() is None:
                desk_proc.kill()
            server.stop()
            stats = link.stats()
    print(f"link: {stats}; phone reconnects: {sum(e['event'] == 'disconnected' for e in phone_events)}, "
          f"resumed: {sum(e['event'] == 'resumed' for e in phone_events)}")
    story = "\n".join(f"phone {e}" for e in phone_events if e["event"] not in ("sent", "received", "acked"))
    assert received_from(phone_events, desk) == list(range(count)), story
    assert received_from(desk_events, phone) == list(range(count)), story
    assert sum(e["event"] == "resumed" for e in phone_events) >= 1  # the cuts really broke the stream
    assert stats["up"]["cut"] + stats["down"]["cut"] > 0
