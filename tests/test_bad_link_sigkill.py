"""A real bad link (tests/netem.py) and a SIGKILL of the server in the middle of a run: nothing the
server had acknowledged is lost. (One file per long test, so test workers can run them side by side.)"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bad_link_run import (acked_by, collect, phone_and_desk, received_from, server_beside, wait_for_event,
                                wait_until)
from tests.netem import bad_link

pytestmark = pytest.mark.long_running


def test_sigkill_mid_run_loses_nothing_the_server_acknowledged(tmp_path: Path) -> None:
    count = 60
    with bad_link(seed=11) as link:
        server = server_beside(link, tmp_path / "appliance")
        phone_events: list[dict[str, Any]] = []
        desk_events: list[dict[str, Any]] = []
        try:
            link.shape(800, 400, 10)
            (phone, phone_lines, phone_proc), (desk, desk_lines, desk_proc) = phone_and_desk(
                link, server, count, interval=1.0, timeout=300)
            phone_lines.wait_for("online", 90)
            readers = [collect(phone_lines, 310, phone_events), collect(desk_lines, 310, desk_events)]
            time.sleep(25)
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
            server.start()  # same data, same ports: the clients reconnect by themselves
            # After the crash neither client can resume, and slixmpp forgets what it had not had
            # acknowledged, so neither will see all `count` messages: wait until both senders have
            # everything acknowledged, then until deliveries settle.
            wait_for_event(phone_events, "flushed", 240)
            wait_for_event(desk_events, "flushed", 240)
            # Then until what was acknowledged has arrived, bounded: over this link a retransmission
            # can take tens of seconds after TCP's backoff, so no fixed quiet period is long enough.
            arrived = lambda: all(acked_by(s) <= set(received_from(r, n)) for s, r, n in (
                (phone_events, desk_events, phone), (desk_events, phone_events, desk)))
            wait_until(arrived, limit=120)
        finally:
            for proc in (desk_proc, phone_proc):
                if proc.poll() is None:
                    proc.kill()
            for reader in readers:
                reader.join(10)
            server.stop()
    for sender_events, receiver_events, sender in ((phone_events, desk_events, phone),
                                                    (desk_events, phone_events, desk)):
        acked = acked_by(sender_events)
        got = set(received_from(receiver_events, sender))
        assert acked, sender_events[-5:]
        assert acked <= got, sorted(acked - got)  # what the server acknowledged arrived
