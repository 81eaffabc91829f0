"""Who may see a PEP node and who hears about it (XEP-0163 §4.3, §6; XEP-0060 §4.5, §7.1.2).

Interest is filtered by entity capabilities: a resource gets events of node N only when its caps
list `N+notify` (features/pep_caps.py learns them with one disco#info query per unknown `ver`).
Events go, as `<message type='headline'>` from the owner's bare JID, to every available resource
of the owner and of each local contact the owner shares presence with (subscription from/both;
nobody but the owner for a whitelist node). When a resource's interest becomes known (its first
available presence, or the caps answer arriving), it gets the last item of each node it wants
from its own account and from every contact it is subscribed to (§6.2 "last published item").

Events use `server.deliver` like any stanza: an inactive phone's XEP-0352 gate holds them (they
are headlines, not urgent), XEP-0198 counts them, a gone resource drops them.
"""

from __future__ import annotations

import copy
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

import trio
from lxml import etree

from appliance.core.router import ANY, Routed, Target
from appliance.core.server import Server
from appliance.core.session import Session
from appliance.features.pep_caps import CAPS, CapsCache, notify_nodes, verified
from appliance.features.presence import SEES_PRESENCE, SHARES_PRESENCE, parse_stored
from appliance.proto import ns
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID
from appliance.proto.stanza import Element, make, sub
from appliance.store import pep as store
from appliance.store import roster
from appliance.store.pep import Item, NodeConfig

log = logging.getLogger("appliance.pep")

EVENT = "http://jabber.org/protocol/pubsub#event"
ERRORS = "http://jabber.org/protocol/pubsub#errors"
STATE = "pep"              # session.state key: the nodes this resource wants events for
PRIMED = "pep-primed"      # session.state key: accounts whose last items this resource has had
MAX_QUERIES = 1000         # caps queries awaiting an answer; the oldest is forgotten beyond this
QUERY_PREFIX = "pep-caps-"  # ids of our caps queries
QUERY_TIMEOUT = 30.0       # seconds a caps query is waited for before another resource is asked


class PubsubError(StanzaError):
    """A stanza error with XEP-0060's application-specific condition (§7.1.3, §6.5.9...)."""

    def __init__(self, condition: str, specific: str, text: str = "") -> None:
        super().__init__(condition, text)
        self.specific = specific

    def to_element(self, client_ns: str = ns.CLIENT) -> Element:
        error = super().to_element(client_ns)
        etree.SubElement(error, f"{{{ERRORS}}}{self.specific}", nsmap={None: ERRORS})
        return error


def pubsub_error(condition: str, specific: str, text: str = "") -> PubsubError:
    return PubsubError(condition, specific, text)


def allowed(server: Server, owner: JID, requester: JID, config: NodeConfig) -> StanzaError | None:
    """None when `requester` (bare) may retrieve the node's items, else the error to answer."""
    if requester == owner or config.access_model == "open":
        return None
    if config.access_model == "whitelist":
        return pubsub_error("not-allowed", "closed-node", "only the owner may see this node")
    item = server.db.read(roster.get_item, owner.local, str(requester))
    if item is not None and item.subscription in SHARES_PRESENCE:
        return None
    return pubsub_error("not-authorized", "presence-subscription-required",
                        f"{owner} does not share presence with you")


def item_element(namespace: str, item: Item) -> Element:
    """`<item id=...>payload</item>` in `namespace` (pubsub for retrieval, pubsub#event for events)."""
    element = etree.Element(f"{{{namespace}}}item", nsmap={None: namespace}, id=item.id)
    element.append(parse_stored(item.payload))
    return element


def setup(server: Server, notifier: "Notifier") -> None:
    server.hook("presence", CAPS, notifier.presence, targets=frozenset({Target.ACCOUNT}), priority=20)
    server.hook("iq", ANY, notifier.caps_answer, targets=frozenset({Target.SERVER}), priority=900)
    server.hook("presence", ANY, notifier.contact_presence, targets=frozenset({Target.BARE, Target.FULL}),
                priority=20)


@dataclass
class _Query:
    """A disco#info query in flight for a `ver`, and the resources waiting for its answer."""
    ver: str
    hash_name: str | None
    node: str                  # the caps node (the query went to node#ver)
    sessions: list[Session]    # the first is the one asked
    sent: float = field(default_factory=trio.current_time)


class Notifier:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.caps = CapsCache()
        self.queries: OrderedDict[str, _Query] = OrderedDict()   # by the id of our disco#info IQ
        self.asked: dict[str, str] = {}   # ver -> id of the query in flight for it

    # ---- events ---------------------------------------------------------------------------------

    def published(self, owner: JID, node: str, config: NodeConfig, item: Item) -> None:
        self._send(owner, node, config, item_element(EVENT, item))

    def retracted(self, owner: JID, node: str, config: NodeConfig, item_id: str) -> None:
        self._send(owner, node, config, etree.Element(f"{{{EVENT}}}retract", nsmap={None: EVENT}, id=item_id))

    def node_event(self, owner: JID, node: str, config: NodeConfig, what: str) -> None:
        """XEP-0060 §8.4.3 / §8.5.3: a node deleted or purged (`what`: 'delete' or 'purge')."""
        for session in self.recipients(owner, node, config):
            message = make("message", to=session.jid, from_=owner, type_="headline", id_=secrets.token_hex(6))
            sub(sub(message, f"{{{EVENT}}}event"), f"{{{EVENT}}}{what}", node=node)
            self.server.deliver(session, message)

    def _send(self, owner: JID, node: str, config: NodeConfig, child: Element) -> None:
        for session in self.recipients(owner, node, config):
            self.server.deliver(session, event_message(owner, session.jid, node, copy.deepcopy(child)))

    def recipients(self, owner: JID, node: str, config: NodeConfig) -> list[Session]:
        """Available resources that want `node` and may see it: the owner's, and its contacts'."""
        accounts = [owner]
        if config.access_model != "whitelist":
            _, items = self.server.db.read(roster.get_roster, owner.local)
            accounts += [jid for item in items if item.subscription in SHARES_PRESENCE
                         and (jid := JID.parse(item.contact)).domain == self.server.domain and jid.local]
        return [s for account in accounts for s in self.server.sessions.available(account)
                if node in s.state.get(STATE, ())]

    # ---- interest, from entity capabilities --------------------------------------------------------

    async def presence(self, routed: Routed) -> bool:
        """The user's own available presence with caps: learn what this resource wants (observes only)."""
        session, c = routed.origin, routed.el.find(f"{{{CAPS}}}c")
        if session is None or routed.to is not None or routed.type is not None or c is None:
            return False
        ver, node = c.get("ver"), c.get("node")
        if not ver or not node:
            return False
        first = session.presence is None
        known = self.caps.get(ver)
        if known is not None:
            self.interested(session, known, resend=first)
        elif (pending := self.queries.get(self.asked.get(ver, ""))) is not None and self._alive(pending):
            if session not in pending.sessions:
                pending.sessions.append(session)
        else:
            waiting = [s for s in pending.sessions if not s.closed] if pending is not None else []
            if pending is not None:
                self._forget(self.asked[ver])
            self._ask(ver, c.get("hash"), node, list(dict.fromkeys([session, *waiting])))
        return False

    @staticmethod
    def _alive(query: _Query) -> bool:
        """Still worth waiting for: the resource asked is there and has had less than QUERY_TIMEOUT
        (otherwise the next resource with that `ver` is asked instead)."""
        return not query.sessions[0].closed and trio.current_time() - query.sent < QUERY_TIMEOUT

    def _ask(self, ver: str, hash_name: str | None, node: str, sessions: list[Session]) -> None:
        query_id = f"{QUERY_PREFIX}{secrets.token_hex(6)}"
        self.queries[query_id] = _Query(ver, hash_name, node, sessions)
        self.asked[ver] = query_id
        while len(self.queries) > MAX_QUERIES:  # a client that never answers must not grow this
            self._forget(next(iter(self.queries)))
        iq = make("iq", to=sessions[0].jid, from_=self.server.domain, type_="get", id_=query_id)
        sub(iq, f"{{{ns.DISCO_INFO}}}query", node=f"{node}#{ver}")
        if not self.server.deliver(sessions[0], iq):
            self._forget(query_id)

    def _forget(self, query_id: str) -> None:
        entry = self.queries.pop(query_id, None)
        if entry is not None and self.asked.get(entry.ver) == query_id:
            del self.asked[entry.ver]

    async def caps_answer(self, routed: Routed) -> bool:
        """A client's answer to our disco#info query (consumed here, never routed on)."""
        query_id = routed.el.get("id") or ""
        if routed.type not in ("result", "error") or not query_id.startswith(QUERY_PREFIX):
            return False
        asked = self.queries.get(query_id)
        if asked is None:
            return True   # a late answer to a query given up on: ours, and nothing more to do
        if routed.from_ != asked.sessions[0].jid:
            return True    # someone else's answer with our id: dropped
        self._forget(query_id)
        query = routed.el.find(f"{{{ns.DISCO_INFO}}}query") if routed.type == "result" else None
        nodes = notify_nodes(query) if query is not None else frozenset()
        if query is not None and verified(query, asked.hash_name, asked.ver):
            self.caps.put(asked.ver, nodes)
            for session in asked.sessions:
                self.interested(session, nodes, resend=True)
            return True
        log.info("%s answered caps %s with an error or features that do not hash to it; used for it alone",
                 routed.from_, asked.ver)
        self.interested(asked.sessions[0], nodes, resend=True)
        if others := [s for s in asked.sessions[1:] if not s.closed]:
            self._ask(asked.ver, asked.hash_name, asked.node, others)
        return True

    def interested(self, session: Session, nodes: frozenset[str], *, resend: bool) -> None:
        """Set what `session` wants; on its first presence or newly wanted nodes, send their last items."""
        before = session.state.get(STATE, frozenset())
        session.state[STATE] = nodes
        wanted = nodes if resend else nodes - before
        if wanted and not session.closed:
            self.send_last(session, wanted)

    def send_last(self, session: Session, nodes: frozenset[str], owners: list[JID] | None = None) -> None:
        """XEP-0163 §6.2: the newest item of each wanted node of `owners` (by default the user's
        own account and every local contact the user sees presence of), as access allows."""
        user = session.jid.bare
        if owners is None:
            _, items = self.server.db.read(roster.get_roster, user.local)
            owners = [user] + [jid for item in items if item.subscription in SEES_PRESENCE
                               and (jid := JID.parse(item.contact)).domain == self.server.domain and jid.local]
        primed = session.state.setdefault(PRIMED, set())
        for owner in owners:
            primed.add(owner)
            for node, (config, item) in self.server.db.read(store.last_items, owner.local).items():
                if node in nodes and allowed(self.server, owner, user, config) is None:
                    self.server.deliver(session, event_message(owner, session.jid, node, item_element(EVENT, item)))

    async def contact_presence(self, routed: Routed) -> bool:
        """A local contact's available presence reaching the user (observes only): a contact that
        just started sharing presence (a new subscription) has not been covered by the user's
        last-item delivery yet, so its last items go now, once per session."""
        owner = routed.from_.bare
        if routed.type is not None or owner.domain != self.server.domain or owner == routed.to_bare:
            return False
        if routed.target is Target.FULL:
            assert routed.to is not None
            found = self.server.sessions.get(routed.to)
            sessions = [found] if found is not None else []
        else:
            sessions = self.server.sessions.available(routed.to_bare)
        for session in sessions:
            nodes = session.state.get(STATE)
            if nodes and owner not in session.state.get(PRIMED, ()):
                self.send_last(session, nodes, [owner])
        return False


def event_message(owner: JID, to: JID, node: str, child: Element) -> Element:
    """XEP-0163 §4.3.2: `<message type='headline'><event><items node=N>child</items></event>`."""
    message = make("message", to=to, from_=owner, type_="headline", id_=secrets.token_hex(6))
    sub(sub(message, f"{{{EVENT}}}event"), f"{{{EVENT}}}items", node=node).append(child)
    return message
