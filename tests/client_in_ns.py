"""The appliance's own client (appliance/client/runner.py) as a process, for link tests: run it in a
network namespace with `ip netns exec` (tests/netem.py) or anywhere else.

    python tests/client_in_ns.py DATA_DIR [--cafile CERT] [--heartbeat S] [--heartbeat-timeout S]
                                 [--connect-timeout S] [--backoff-initial S]

DATA_DIR holds a client.sqlite with a stored account (ClientState.save_account). Commands on stdin,
one a line: `send JID BODY` queues a chat message (runner.send_message). Prints one JSON object per
line, flushed at once, each with "t" (seconds since the process started):
  {"event": "status", "status": "connecting|online|waiting|needs-pairing|stopped",
   "delay": S or null, "reason": "...", "resumed": bool}
  {"event": "received", "from": full JID, "body": "..."}
  {"event": "queued", "id": message id}
Ends when the runner returns (needs pairing) or stdin closes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import trio
from lxml import etree

from appliance.client.backoff import Backoff
from appliance.client.runner import ClientRunner, StatusChange
from appliance.client.state import ClientState
from appliance.proto import ns
from appliance.proto.stanza import Element

START = time.monotonic()


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic() - START, 3), **fields}), flush=True)


def on_status(change: StatusChange) -> None:
    emit("status", status=change.status.value, delay=change.delay, reason=change.reason,
         resumed=change.resumed)


def on_stanza(stanza: Element) -> None:
    body = stanza.findtext(f"{{{ns.CLIENT}}}body")
    if etree.QName(stanza).localname == "message" and body is not None:
        emit("received", **{"from": stanza.get("from"), "body": body})


async def commands(runner: ClientRunner) -> None:
    async for line in trio.wrap_file(sys.stdin):
        verb, _, rest = line.strip().partition(" ")
        if verb == "send":
            to, _, body = rest.partition(" ")
            emit("queued", id=await runner.send_message(to, body))


async def main(args: argparse.Namespace) -> None:
    runner = ClientRunner(ClientState(args.data_dir), on_stanza=on_stanza, on_status=on_status,
                          heartbeat_interval=args.heartbeat, heartbeat_timeout=args.heartbeat_timeout,
                          connect_timeout=args.connect_timeout, cafile=args.cafile,
                          backoff=Backoff(initial=args.backoff_initial), rng=random.Random(args.seed))
    async with trio.open_nursery() as nursery:
        async def until_stdin_closes() -> None:
            await commands(runner)
            nursery.cancel_scope.cancel()
        nursery.start_soon(until_stdin_closes)
        await runner.run()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--cafile")
    parser.add_argument("--heartbeat", type=float, default=120.0)
    parser.add_argument("--heartbeat-timeout", type=float, default=30.0)
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--backoff-initial", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    trio.run(main, parser.parse_args())
