"""A standalone XMPP client process for link tests (run inside a network namespace with `ip netns exec`).

    python tests/link_client.py HOST PORT JID PASSWORD CERT PEER COUNT MODE [--timeout S] [--plugin xep_NNNN]

MODE: `send` (COUNT messages to PEER), `receive` (until COUNT messages from PEER arrived), `both`.
Bodies are "<sender's JID> <n>" with n = 0..COUNT-1, so the receiver can check order and duplicates.
Prints one JSON object per line, flushed at once, each with "t" (seconds since the process started):
  {"event": "online", "jid": full JID}        logged in, presence sent
  {"event": "sent", "n": n}                   message n handed to the stream
  {"event": "received", "from": JID, "n": n, "body": ...}
  {"event": "flushed"}                        a ping to the server came back after the last message
                                              (the stream is ordered: the server has taken them all)
  {"event": "disconnected", "reason": ...}    the stream went away (each time)
  {"event": "done"} / {"event": "timeout"} / {"event": "auth_failed"}
  {"event": "acked", "n": n}                  (with stream management) the server acknowledged message n
  {"event": "resumed"} / {"event": "sm_failed"}
Exit status: 0 done, 1 authentication failed, 2 timeout (its own `--timeout`, default 60 s).
`--plugin xep_0198` turns on slixmpp's stream management; `--reconnect` reconnects (and so
resumes) whenever the stream goes away, and `--keepalive S` pings the server every S seconds and
drops a connection whose ping goes unanswered, as a phone app does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from typing import Any

import slixmpp
import slixmpp.xmlstream

START = time.monotonic()
# slixmpp waits for the answer to <resume/> (and <enable/>) with a Waiter that outlives its
# connection: when the link dies while a resume is in flight, that waiter times out 30 s later,
# during another connection attempt, and its coroutine then wipes the stream-management state
# (sm_id, unacked queue) and goes on to bind a resource on the *new* connection, even in the
# middle of its TLS handshake. Seen in CI: a "tlsv1 alert protocol version" from the server,
# then "online" with a new resource and no "sm_failed". A phone app does not forget its session
# that way: here the waiters of a connection that went away are dropped (`drop_stale_waiters`)
# and never time out, and a connection that makes no progress is dropped by `unstick` below.
slixmpp.xmlstream.RESPONSE_TIMEOUT = 3600


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic() - START, 3), **fields}), flush=True)


class LinkClient(slixmpp.ClientXMPP):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.jid, args.password)
        self.args = args
        self.ssl_context = ssl.create_default_context(cafile=args.cert)   # checks the JID's domain
        self.enable_starttls, self.enable_direct_tls, self.enable_plaintext = True, False, False
        for plugin in ("xep_0199", *args.plugin):
            self.register_plugin(plugin)
        self.online = asyncio.get_event_loop().create_future()
        self.all_received = asyncio.get_event_loop().create_future()
        self.received = 0
        self.distinct: set[str] = set()
        self.peer = slixmpp.JID(args.peer).bare
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("failed_all_auth", self.on_auth_failed)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("session_resumed", self.on_resumed)
        self.add_event_handler("sm_failed", lambda _: emit("sm_failed"))
        self.add_event_handler("stanza_acked", self.on_acked)
        self.up = asyncio.Event()       # a stream is there to send on
        self.down_since = time.monotonic()
        self.finished = False
        if args.mode == "send" or args.count == 0:
            self.all_received.set_result(True)

    def on_disconnected(self, reason: Any) -> None:
        self.up.clear()
        self.drop_stale_waiters()
        self.down_since = time.monotonic()
        emit("disconnected", reason=str(reason))
        if self.args.reconnect and not self.finished:
            asyncio.get_event_loop().call_later(1.0, self.connect, self.args.host, self.args.port)

    def drop_stale_waiters(self) -> None:
        """The connection is gone: its stream-management waiters must never fire (see above)."""
        for name in ("resumed_or_failed", "enabled_or_failed"):
            while self.remove_handler(name):
                pass

    def on_resumed(self, _: Any) -> None:
        emit("resumed")
        self.up.set()

    def on_acked(self, stanza: Any) -> None:
        if stanza.name == "message" and stanza["body"]:
            n = stanza["body"].rpartition(" ")[2]
            emit("acked", n=int(n) if n.isdigit() else None)

    async def keepalive(self) -> None:
        """Ping the server; an unanswered ping means a dead link: drop it (and reconnect)."""
        while not self.finished:
            await asyncio.sleep(self.args.keepalive)
            if not self.up.is_set():
                self.unstick()
                continue
            try:
                await self.plugin["xep_0199"].ping(jid=self.boundjid.domain, timeout=self.args.keepalive)
            except Exception:
                if self.up.is_set() and not self.finished:
                    emit("ping_timeout")
                    self.abort()

    def unstick(self) -> None:
        """A reconnection that made no progress for a while (e.g. a login cut off mid-TLS, which
        slixmpp may never notice) is dropped and started again, as a phone's reconnect loop does."""
        if not self.args.reconnect or time.monotonic() - self.down_since < 6 * self.args.keepalive:
            return
        emit("stalled")
        self.down_since = time.monotonic()
        # A transport that is already closing would never report its end again (suspected cause
        # of a phone that stopped reconnecting for good in one CI run): start a new attempt then.
        if self.transport is not None and not self.transport.is_closing():
            self.abort()
        else:
            self.connect(self.args.host, self.args.port)

    async def wait_until_acked(self) -> None:
        """With stream management: every stanza sent has been acknowledged by the server."""
        sm = self.plugin["xep_0198"]
        while sm.unacked_queue:
            if self.up.is_set():
                sm.request_ack()
            await asyncio.sleep(1.0)

    def on_session_start(self, _: Any) -> None:
        self.send_presence()
        emit("online", jid=str(self.boundjid))
        self.up.set()
        if not self.online.done():
            self.online.set_result(True)

    def on_auth_failed(self, _: Any) -> None:
        if not self.online.done():
            self.online.set_result(False)

    def on_message(self, msg: Any) -> None:
        if msg["type"] not in ("chat", "normal") or not msg["body"]:
            return
        body = msg["body"]
        n = body.rpartition(" ")[2]
        emit("received", **{"from": str(msg["from"]), "n": int(n) if n.isdigit() else None, "body": body})
        if msg["from"].bare == self.peer:
            self.received += 1
            self.distinct.add(body)  # a redelivery after a crash must not count twice
            if len(self.distinct) >= self.args.count and not self.all_received.done():
                self.all_received.set_result(True)

    async def exchange(self) -> int:
        self.connect(self.args.host, self.args.port)
        if not await self.online:
            emit("auth_failed")
            self.abort()
            return 1
        if self.args.keepalive:
            asyncio.ensure_future(self.keepalive())
        if self.args.mode in ("send", "both"):
            me = self.boundjid.bare
            for n in range(self.args.count):
                await self.up.wait()
                self.send_message(mto=self.peer, mbody=f"{me} {n}", mtype="chat")
                emit("sent", n=n)
                if self.args.interval:
                    await asyncio.sleep(self.args.interval)
            if "xep_0198" in self.args.plugin:
                await self.wait_until_acked()
            else:
                await self.plugin["xep_0199"].ping(jid=self.boundjid.domain, timeout=self.args.timeout)
            emit("flushed")
        await self.all_received
        self.finished = True
        emit("done")
        self.disconnect(wait=self.args.linger)
        await self.disconnected
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("jid")
    parser.add_argument("password")
    parser.add_argument("cert", help="the server's certificate (PEM) to trust")
    parser.add_argument("peer", help="JID to send to / expect messages from")
    parser.add_argument("count", type=int)
    parser.add_argument("mode", choices=("send", "receive", "both"))
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds (exit 2)")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between two sent messages")
    parser.add_argument("--linger", type=float, default=2.0, help="seconds to wait for the server's </stream>")
    parser.add_argument("--plugin", action="append", default=[], help="extra slixmpp plugin, e.g. xep_0198")
    parser.add_argument("--reconnect", action="store_true", help="reconnect (and resume) when the stream goes")
    parser.add_argument("--keepalive", type=float, default=0.0, help="ping the server every S seconds")
    args = parser.parse_args()

    async def bounded() -> int:
        client = LinkClient(args)
        try:
            return await asyncio.wait_for(client.exchange(), args.timeout)
        except asyncio.TimeoutError:
            emit("timeout", received=client.received)
            return 2

    sys.exit(asyncio.run(bounded()))


if __name__ == "__main__":
    main()
