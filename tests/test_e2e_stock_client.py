"""Interop (issue 7): a stock client that does not know the appliance's NaCl format - slixmpp,
logged in on the same account as the appliance's own client - gets the fallback body of an
encrypted message, never its plaintext, and nothing breaks."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

from appliance.client.e2e import FALLBACK_BODY
from appliance.client.state import ClientState
from tests.harness import ServerProcess
from tests.slix import connected, run
from tests.test_chat_tmux import READY, appliance, paired


def publish_keys(data: Path) -> None:
    """Run the terminal client until its device key is published, then stop it."""
    follow = subprocess.Popen(appliance("chat", "follow", "--data-dir", str(data)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert [follow.stderr.readline().strip() for _ in range(3)] == ["* connecting", "* online", READY]
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=15) == 0


def test_a_stock_client_sees_the_fallback_body_only(server: ServerProcess, tmp_path: Path) -> None:
    kai, lea = tmp_path / "kai", tmp_path / "lea"
    paired(server, kai, "kai")
    paired(server, lea, "lea", "--contact", "kai")
    publish_keys(kai)
    account = ClientState(kai).load_account()
    assert account is not None
    secret = "the safe code is 4711-0815"

    async def scenario() -> str:
        phone = await connected(server, f"{account.jid}/stock-phone", password=account.password)
        try:
            # in a thread: slixmpp's loop must keep reading while the sender waits for its ack
            sent = await asyncio.to_thread(subprocess.run, appliance("chat", "send", account.jid, secret,
                                                                      "--data-dir", str(lea)),
                                           capture_output=True, text=True, timeout=90)
            assert sent.returncode == 0, sent.stderr
            while True:  # PEP events (body-less headlines) may come first
                message = await phone.next_message(timeout=30)
                if message["body"]:
                    return str(message)
        finally:
            await phone.logout()

    received = run(scenario(), timeout=120)
    assert FALLBACK_BODY.replace("'", "&apos;") in received or FALLBACK_BODY in received
    assert secret not in received
    assert "urn:appliance:e2e:0" in received   # the ciphertext travels beside the fallback
