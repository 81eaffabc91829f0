"""The terminal chat client's plumbing (`appliance chat`, appliance/commands/chat.py): run a
SecureClient for the length of a command, print messages and status changes as plain lines (they
work in tmux, in pipes and in logs), and the interactive loop reading typed lines from stdin.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, TextIO

import trio

from appliance.client.runner import Status, StatusChange
from appliance.client.secure import Incoming, NoKeys, SecureClient
from appliance.client.e2e import KeyChanged
from appliance.client.link import LinkLost, StanzaRefused
from appliance.client.invite import NoInvite
from appliance.client.state import ClientState

ONLINE_TIMEOUT = 60.0   # how long a one-shot command waits to get online
NEEDS_PAIRING = ("the server refused this device's credentials; pair again with a new invite: "
                 "appliance pair URI")


READY = "* ready: this device's key is published, encrypted messages can reach it"


class ChatFailed(Exception):
    """The command could not do its job; the message is one sentence for stderr (exit 1)."""


def message_line(message: Incoming) -> str:
    """`[HH:MM:SS] peer [e2e verified]: text`; a message that could not be opened is loud."""
    when = time.strftime("%H:%M:%S", time.localtime(message.stamp))
    if message.problem is not None:
        return f"[{when}] {message.peer} !! NOT SHOWN ({message.problem}): {message.body}"
    mark = f"e2e {message.trust}" if message.encrypted else "plain, not encrypted"
    return f"[{when}] {message.peer} [{mark}]: {message.body}"


def status_line(change: StatusChange) -> str:
    if change.status == Status.WAITING:
        return f"* waiting {change.delay:.0f} s before reconnecting ({change.reason})"
    if change.status == Status.NEEDS_PAIRING:
        return f"* {NEEDS_PAIRING}"
    return f"* {change.status.value}" + (" (session resumed)" if change.resumed else "")


def key_change_line(jid: str, device_ids: list[int]) -> str:
    devices = ", ".join(str(d) for d in device_ids)
    return (f"!! the key of {jid}'s device {devices} changed: messages from it are not shown until "
            f"you check it and accept it (/accept {jid} DEVICE)")


class Printer:
    """Lines to stdout (messages) and stderr (status, problems), flushed at once."""

    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.out, self.err = out, err

    def message(self, message: Incoming) -> None:
        print(message_line(message), file=self.out, flush=True)

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def status(self, change: StatusChange) -> None:
        print(status_line(change), file=self.err, flush=True)

    def key_change(self, jid: str, device_ids: list[int]) -> None:
        print(key_change_line(jid, device_ids), file=self.err, flush=True)


@asynccontextmanager
async def running(state: ClientState, printer: Printer, *, quiet_status: bool = False, wait: bool = True,
                  **options: object) -> AsyncIterator[SecureClient]:
    """A SecureClient that runs (reconnecting) while the block runs; with `wait` the block starts
    once it is online. ChatFailed when the account needs pairing."""
    if state.load_account() is None:
        raise ChatFailed("this data directory has no account yet; pair first: appliance pair URI")
    client = SecureClient(state, on_message=printer.message, on_key_change=printer.key_change,
                          on_status=None if quiet_status else printer.status, **options)
    async with trio.open_nursery() as nursery:
        refused = trio.Event()

        async def run() -> None:
            if await client.run() == Status.NEEDS_PAIRING:
                refused.set()
                nursery.cancel_scope.cancel()
        nursery.start_soon(run)
        if not quiet_status:
            nursery.start_soon(_announce_ready, client, printer)
        with trio.move_on_after(ONLINE_TIMEOUT if wait else 0) as waited:
            await client.wait_online()
        if wait and waited.cancelled_caught:
            raise ChatFailed(f"could not get online within {ONLINE_TIMEOUT:g} s "
                             f"({client.runner.change.reason or 'no answer'})")
        yield client
        nursery.cancel_scope.cancel()
    if refused.is_set():
        raise ChatFailed(NEEDS_PAIRING)


async def _announce_ready(client: SecureClient, printer: Printer) -> None:
    """Say once when this device's key is published: from then on others can write to it."""
    await client.wait_online()
    print(READY, file=printer.err, flush=True)


async def send_acknowledged(client: SecureClient, to: str, text: str, *, plain: bool) -> str:
    """Send, and return once the server acknowledged the message (it left the outbox)."""
    try:
        message_id = await (client.send_plain(to, text) if plain else client.send(to, text))
    except NoKeys:
        raise ChatFailed(f"{to} has published no encryption keys (no paired device); "
                         "send with --plain to send it unencrypted") from None
    except KeyChanged as exc:
        raise ChatFailed(f"a key of {to} changed ({exc}); check it and accept it first") from None
    except StanzaRefused as exc:  # e.g. fetching the keys of someone who is no contact
        raise ChatFailed(f"the server refused: {exc}") from None
    except (LinkLost, trio.TooSlowError):
        raise ChatFailed(f"the connection broke while fetching {to}'s keys; try again") from None
    while any(item.element().get("id") == message_id for item in client.runner.outbox.pending()):
        await trio.sleep(0.05)
    return message_id


async def read_lines() -> AsyncIterator[str]:
    """Lines typed on stdin (a duplicate of fd 0, so closing it leaves the terminal alone)."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    pending = b""
    async with stream:
        while chunk := await stream.receive_some(4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", "replace")


async def contact_invite(client: SecureClient) -> str:
    """A contact invite from this account (SecureClient.contact_invite: the server's XEP-0401
    ad-hoc command plus this account's key fingerprints), or ChatFailed with the reason."""
    try:
        return await client.contact_invite()
    except (StanzaRefused, LinkLost, NoInvite, trio.TooSlowError) as exc:
        raise ChatFailed(f"the server made no invite: {exc}") from None
