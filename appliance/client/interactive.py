"""`appliance chat` without an action: an interactive chat in the terminal.

Incoming messages and status changes are printed as plain lines as they come; a typed line goes to
the current peer (chosen with /to). Plain line-oriented output, so it works in tmux and pipes.
"""

from __future__ import annotations

import argparse


from appliance.client.secure import SecureClient
from appliance.client.state import ClientState
from appliance.client.terminal import ChatFailed, Printer, read_lines, running, send_acknowledged

HELP = ("commands: /to JID (whom typed lines go to), /contacts, /keys JID, /accept JID DEVICE "
        "(accept a changed key), /quit")


class Session:
    """The interactive state: the client, where output goes and the current peer."""

    def __init__(self, client: SecureClient, printer: Printer) -> None:
        self.client, self.printer = client, printer
        self.peer: str | None = None

    async def handle(self, line: str) -> bool:
        """Act on one typed line; False when the user quits."""
        if not line.strip():
            return True
        if not line.startswith("/"):
            await self.say(line)
            return True
        command, *words = line.split()
        if command == "/quit":
            return False
        handler = {"/to": self.to, "/contacts": self.contacts, "/keys": self.keys,
                   "/accept": self.accept}.get(command)
        if handler is None:
            self.printer.line(f"? unknown command {command}; {HELP}")
        else:
            try:
                handler(*words)
            except (TypeError, ValueError):  # missing words, a device id that is no number
                self.printer.line(f"? wrong arguments for {command}; {HELP}")
        return True

    async def say(self, text: str) -> None:
        if self.peer is None:
            self.printer.line("? choose whom to write to first: /to JID")
            return
        try:
            await self.client.wait_online()
            await send_acknowledged(self.client, self.peer, text, plain=False)
        except ChatFailed as exc:
            self.printer.line(f"!! not sent: {exc}")
            return
        self.printer.line(f"(sent to {self.peer}, encrypted)")

    def to(self, jid: str) -> None:
        self.peer = jid
        self.printer.line(f"* typed lines now go to {jid}")

    def contacts(self) -> None:
        for item in self.client.contacts():
            self.printer.line(f"  {item.jid} ({item.subscription})")

    def keys(self, jid: str) -> None:
        for device_id, fingerprint, trust in self.client.devices(jid):
            self.printer.line(f"  {jid} device {device_id}: {trust} {fingerprint}")
        if not self.client.devices(jid):
            self.printer.line(f"  no keys of {jid} known yet")

    def accept(self, jid: str, device: str) -> None:
        self.client.accept_key_change(jid, int(device))
        self.printer.line(f"* accepted the new key of {jid}'s device {device}")


async def interact(state: ClientState, args: argparse.Namespace) -> None:
    printer = Printer()
    async with running(state, printer, wait=False) as client:
        session = Session(client, printer)
        printer.line(HELP)
        async for line in read_lines():
            if not await session.handle(line):
                break
    printer.line("* bye")
