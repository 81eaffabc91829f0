"""XEP-0050 ad-hoc commands at the server's JID: a small framework other features register with.

A feature describes a `Command` (node, name, who may run it, what it does, and optionally the form
it asks for first) and calls `register(server, command)`. This module answers the rest:
disco#items on the node `http://jabber.org/protocol/commands` (only the commands the requester
may run), disco#info on each command node, and `<command/>` execution with its sessions and the
§4.6 errors. Commands are single-stage: either they complete at once, or they first return their
form (status `executing`, with a sessionid) and complete when it comes back.
"""

from __future__ import annotations

import secrets
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

from lxml import etree

from appliance.core.router import Routed, Target
from appliance.core.server import Server
from appliance.proto import forms, ns
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID
from appliance.proto.stanza import Element, iq_result

SESSION_SECONDS = 600.0     # a form left unanswered this long is forgotten
MAX_SESSIONS = 256          # open sessions kept at most; the oldest go first (memory is bounded)
PRIORITY = 10               # before disco.py, which answers every other node
ACTIONS = frozenset({"execute", "cancel", "prev", "next", "complete"})
# §4.6: each command-specific condition and the general condition it comes with.
SPECIFIC_CONDITIONS = {"malformed-action": "bad-request", "bad-action": "bad-request",
                       "bad-locale": "bad-request", "bad-payload": "bad-request",
                       "bad-sessionid": "bad-request", "session-expired": "not-allowed"}

Values = dict[str, list[str]]


@dataclass(frozen=True)
class Command:
    node: str
    name: str
    allowed: Callable[[JID], bool]                      # may this requester (a full JID) see and run it
    run: Callable[[JID, Values], Awaitable[list[Element]]]  # complete it: the payload of the answer
    form: Callable[[JID], Element] | None = None        # the input it asks for first, if any


class CommandError(StanzaError):
    """A §4.6 error: the general condition with the commands namespace's specific one."""

    def __init__(self, specific: str, text: str) -> None:
        super().__init__(SPECIFIC_CONDITIONS[specific], text)
        self.specific = specific

    def to_element(self, client_ns: str = ns.CLIENT) -> Element:
        error = super().to_element(client_ns)
        etree.SubElement(error, f"{{{ns.COMMANDS}}}{self.specific}", nsmap={None: ns.COMMANDS})
        return error


@dataclass
class _Session:
    node: str
    requester: JID
    expires: float


@dataclass
class Commands:
    """The commands of one server, and the sessions of those waiting for their form."""
    by_node: dict[str, Command] = field(default_factory=dict)
    sessions: OrderedDict[str, _Session] = field(default_factory=OrderedDict)

    def visible_to(self, requester: JID) -> list[Command]:
        return [c for c in self.by_node.values() if c.allowed(requester)]

    def open_session(self, node: str, requester: JID) -> str:
        now = time.monotonic()
        for sessionid in [s for s, session in self.sessions.items() if session.expires <= now]:
            del self.sessions[sessionid]
        while len(self.sessions) >= MAX_SESSIONS:
            self.sessions.popitem(last=False)
        sessionid = secrets.token_urlsafe(12)
        self.sessions[sessionid] = _Session(node, requester, now + SESSION_SECONDS)
        return sessionid

    def close_session(self, sessionid: str, node: str, requester: JID) -> None:
        """End a session the requester names; a wrong, foreign or stale one is an error."""
        session = self.sessions.get(sessionid)
        if session is None or session.node != node or session.requester != requester:
            raise CommandError("bad-sessionid", f"no session {sessionid!r} of this command is open for you")
        del self.sessions[sessionid]
        if session.expires <= time.monotonic():
            raise CommandError("session-expired", "this command session timed out; execute the command again")


# Per server, not global: tests and tools may build more than one server in a process.
_registries: weakref.WeakKeyDictionary[Server, Commands] = weakref.WeakKeyDictionary()


def commands_of(server: Server) -> Commands:
    return _registries.setdefault(server, Commands())


def register(server: Server, command: Command) -> None:
    commands = commands_of(server)
    if command.node in commands.by_node:
        raise ValueError(f"two ad-hoc commands with the node {command.node}")
    commands.by_node[command.node] = command


def setup(server: Server) -> None:
    commands = commands_of(server)
    server.add_disco_feature(ns.COMMANDS)

    async def items(routed: Routed) -> bool:
        if routed.type != "get" or routed.payload.get("node") != ns.COMMANDS:  # type: ignore[union-attr]
            return False
        query = _query(ns.DISCO_ITEMS, ns.COMMANDS)
        for command in commands.visible_to(routed.from_):
            etree.SubElement(query, f"{{{ns.DISCO_ITEMS}}}item", jid=server.domain, node=command.node,
                             name=command.name)
        await server.reply(routed, iq_result(routed.el, query))
        return True

    async def info(routed: Routed) -> bool:
        node = routed.payload.get("node")  # type: ignore[union-attr]
        if routed.type != "get" or (node != ns.COMMANDS and node not in commands.by_node):
            return False
        await server.reply(routed, iq_result(routed.el, _node_info(commands, node, routed.from_)))
        return True

    async def execute(routed: Routed) -> bool:
        answer = await _execute(commands, routed)
        await server.reply(routed, iq_result(routed.el, answer))
        return True

    server.hook("iq", ns.DISCO_ITEMS, items, targets=frozenset({Target.SERVER}), priority=PRIORITY)
    server.hook("iq", ns.DISCO_INFO, info, targets=frozenset({Target.SERVER}), priority=PRIORITY)
    server.hook("iq", ns.COMMANDS, execute, targets=frozenset({Target.SERVER}))


def _query(namespace: str, node: str) -> Element:
    return etree.Element(f"{{{namespace}}}query", nsmap={None: namespace}, node=node)


def _node_info(commands: Commands, node: str, requester: JID) -> Element:
    """§2.2: the command list node, or one command (forbidden to those who may not run it)."""
    query = _query(ns.DISCO_INFO, node)
    identity = f"{{{ns.DISCO_INFO}}}identity"
    feature = f"{{{ns.DISCO_INFO}}}feature"
    if node == ns.COMMANDS:
        etree.SubElement(query, identity, category="automation", type="command-list", name="Commands")
        return query
    command = commands.by_node[node]
    if not command.allowed(requester):
        raise StanzaError("forbidden", f"you may not run {node}")
    etree.SubElement(query, identity, category="automation", type="command-node", name=command.name)
    etree.SubElement(query, feature, var=ns.COMMANDS)
    etree.SubElement(query, feature, var=ns.DATA_FORMS)
    return query


async def _execute(commands: Commands, routed: Routed) -> Element:
    request = routed.payload
    assert request is not None  # the router chose this handler by the payload's namespace
    if routed.type != "set" or etree.QName(request).localname != "command":
        raise StanzaError("bad-request", "execute a command with <command/> in an IQ of type set")
    node = request.get("node") or ""
    command = commands.by_node.get(node)
    if command is None:
        raise StanzaError("item-not-found", f"there is no command {node!r}")
    if not command.allowed(routed.from_):
        raise StanzaError("forbidden", f"you may not run {node}")
    action = request.get("action") or "execute"
    if action not in ACTIONS:
        raise CommandError("malformed-action", f"unknown action {action!r}")
    sessionid = request.get("sessionid")
    if sessionid is None:
        return await _start(commands, command, routed.from_, action)
    return await _continue(commands, command, routed.from_, action, sessionid, request)


async def _start(commands: Commands, command: Command, requester: JID, action: str) -> Element:
    if action != "execute":
        raise CommandError("bad-action", f"a command starts with action 'execute', not {action!r}")
    if command.form is None:
        return _answer(command.node, secrets.token_urlsafe(12), "completed",
                       await _run(command, requester, {}))
    sessionid = commands.open_session(command.node, requester)
    actions = etree.Element(f"{{{ns.COMMANDS}}}actions", execute="complete")
    etree.SubElement(actions, f"{{{ns.COMMANDS}}}complete")
    return _answer(command.node, sessionid, "executing", [actions, command.form(requester)])


async def _continue(commands: Commands, command: Command, requester: JID, action: str, sessionid: str,
                    request: Element) -> Element:
    """The second request of a session: the filled-in form (complete, or execute, which our
    <actions/> makes equal to complete), or cancel."""
    if action in ("prev", "next"):
        raise CommandError("bad-action", f"this command has one stage: complete or cancel it, not {action!r}")
    commands.close_session(sessionid, command.node, requester)
    if action == "cancel":
        return _answer(command.node, sessionid, "canceled")
    form = forms.find(request)
    if form is None:
        raise CommandError("bad-payload", "send the filled-in form (jabber:x:data, type submit)")
    try:
        values = forms.submitted(form)
    except forms.FormError as exc:
        raise CommandError("bad-payload", str(exc)) from None
    return _answer(command.node, sessionid, "completed", await _run(command, requester, values))


async def _run(command: Command, requester: JID, values: Values) -> list[Element]:
    try:
        return await command.run(requester, values)
    except forms.FormError as exc:  # a value the command could not read: the requester's to fix
        raise CommandError("bad-payload", str(exc)) from None


def _answer(node: str, sessionid: str, status: str, payload: Iterable[Element] = ()) -> Element:
    command = etree.Element(f"{{{ns.COMMANDS}}}command", nsmap={None: ns.COMMANDS}, node=node,
                            sessionid=sessionid, status=status)
    command.extend(payload)
    return command
