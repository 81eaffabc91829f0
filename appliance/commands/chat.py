"""`appliance chat`: the terminal chat client of an account paired with `appliance pair`
(docs/client.md, "The terminal client").

`chat contacts`, `chat send JID TEXT`, `chat follow` and `chat invite` are for scripts; `chat`
alone is interactive: incoming messages are printed as they come, typed lines go to the current
peer, `/help` lists the commands. Messages are end-to-end encrypted (appliance/client/secure.py).
"""

from __future__ import annotations

import argparse
import sys

import trio

from appliance.client.interactive import interact
from appliance.client.state import ClientState
from appliance.client.terminal import ChatFailed, Printer, contact_invite, running, send_acknowledged
from appliance.commands.pair import data_dir_option, default_data_dir
from appliance.pairing import qr

OK, FAILED = 0, 1


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    data = data_dir_option()
    parser = sub.add_parser("chat", parents=[data], help="chat from the terminal (after `appliance pair`)")
    parser.set_defaults(run=run, action=None)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("contacts", parents=[data], help="the contacts and the trust of their keys")
    send = actions.add_parser("send", parents=[data], help="send one message; returns once the server has it")
    send.add_argument("jid")
    send.add_argument("text")
    send.add_argument("--plain", action="store_true",
                      help="send unencrypted (for contacts whose devices published no keys)")
    actions.add_parser("follow", parents=[data], help="print incoming messages until Ctrl-C")
    actions.add_parser("invite", parents=[data], help="print a contact invite (URI and QR) to show someone")


def run(args: argparse.Namespace) -> int:
    state = ClientState(args.data_dir or default_data_dir())
    action = {None: interact, "contacts": _contacts, "send": _send, "follow": _follow,
              "invite": _invite}[args.action]
    try:
        trio.run(action, state, args)
    except BaseException as exc:  # trio's nurseries wrap what ends the command in exception groups
        cause = _alone(exc)
        if isinstance(cause, ChatFailed):
            print(f"appliance chat: {cause}", file=sys.stderr)
            return FAILED
        if not isinstance(cause, KeyboardInterrupt):  # Ctrl-C is how `follow` and `chat` end
            raise
    return OK


def _alone(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _contacts(state: ClientState, args: argparse.Namespace) -> None:
    printer = Printer()
    async with running(state, printer, quiet_status=True) as client:
        for item in client.contacts():
            devices = client.devices(item.jid)
            keys = ", ".join(f"device {d} {trust} {fp}" for d, fp, trust in devices) or "no keys known"
            printer.line(f"{item.jid} ({item.subscription}): {keys}")


async def _send(state: ClientState, args: argparse.Namespace) -> None:
    async with running(state, Printer(), quiet_status=True) as client:
        await send_acknowledged(client, args.jid, args.text, plain=args.plain)


async def _follow(state: ClientState, args: argparse.Namespace) -> None:
    async with running(state, Printer()):
        await trio.sleep_forever()


async def _invite(state: ClientState, args: argparse.Namespace) -> None:
    printer = Printer()
    async with running(state, printer, quiet_status=True) as client:
        uri = await contact_invite(client)
    printer.line(uri)
    printer.line(qr.terminal(uri))
