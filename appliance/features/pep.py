"""XEP-0163 Personal Eventing Protocol: every account is a pubsub service at its bare JID.

The owner publishes (`<publish node=N>` with an optional publish-options form, XEP-0060 §7.1.5),
which creates the node on first use; contacts retrieve items (§6.5) as the node's access model
allows: `presence` (the default: the owner shares presence with them), `open` (anyone) or
`whitelist` (the owner only: XEP-0223 private storage). The owner retracts items, purges and
deletes nodes (`pubsub#owner`) and reads or changes a node's configuration. Who hears about what
(notifications, `+notify` interest learnt through entity capabilities, the last published item)
is features/pep_notify.py; the storage is store/pep.py; docs/pep.md says what a client can rely on.
"""

from __future__ import annotations

import uuid

from lxml import etree

from appliance.core.router import Routed, Target
from appliance.core.server import Server
from appliance.features import pep_notify
from appliance.features.pep_notify import ERRORS, EVENT, Notifier, allowed, pubsub_error
from appliance.proto import forms, ns
from appliance.proto.errors import StanzaError
from appliance.proto.stanza import Element, iq_result, serialize, sub
from appliance.store import pep as store
from appliance.store.pep import NodeConfig

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = "http://jabber.org/protocol/pubsub#owner"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
FEATURES = ("publish", "publish-options", "auto-create", "auto-subscribe", "filtered-notifications",
            "retrieve-items", "retract-items", "delete-nodes", "purge-nodes", "persistent-items",
            "config-node", "access-presence", "access-open", "access-whitelist", "last-published")
_ACCOUNT = frozenset({Target.ACCOUNT, Target.BARE})


def setup(server: Server) -> None:
    for feature in FEATURES:
        server.add_disco_feature(f"{PUBSUB}#{feature}", server=False, account=True)
    notifier = Notifier(server)
    service = Service(server, notifier)
    server.hook("iq", PUBSUB, service.pubsub, targets=_ACCOUNT)
    server.hook("iq", OWNER, service.owner, targets=frozenset({Target.ACCOUNT}))
    server.hook("iq", ns.DISCO_ITEMS, service.disco_items, targets=_ACCOUNT, priority=10)
    pep_notify.setup(server, notifier)


class Service:
    def __init__(self, server: Server, notifier: Notifier) -> None:
        self.server = server
        self.notifier = notifier
        self.limits = server.config.pep

    async def pubsub(self, routed: Routed) -> bool:
        if routed.type not in ("get", "set"):
            return False   # results and errors (e.g. an app server's answer) are not requests
        request = _only_child(routed.payload)
        name = etree.QName(request).localname
        if (name, routed.type) == ("items", "get"):
            return await self._answer(routed, self._items(routed, request))
        if routed.type == "set" and name in ("publish", "retract"):
            if routed.target is not Target.ACCOUNT:
                raise StanzaError("forbidden", "only the account itself may change its PEP nodes")
            if name == "publish":
                return await self._answer(routed, await self._publish(routed, request))
            await self._retract(routed, request)
            return await self._answer(routed, None)
        raise pubsub_error("feature-not-implemented", "unsupported",
                           f"PEP does not support <{name}/> ({routed.type}); subscriptions come from"
                           " presence and +notify")

    async def owner(self, routed: Routed) -> bool:
        if routed.type not in ("get", "set"):
            return False
        request = _only_child(routed.payload)
        name, node = etree.QName(request).localname, _node(request)
        username = routed.to_bare.local
        config = self.server.db.read(store.get_node, username, node)
        if config is None:
            raise StanzaError("item-not-found", f"no node {node}")
        if name == "configure" and routed.type == "get":
            configure = etree.Element(f"{{{OWNER}}}configure", nsmap={None: OWNER}, node=node)
            configure.append(forms.build("form", _config_fields(config, self.limits.max_items_per_node),
                                         form_type=NODE_CONFIG))
            wrapper = etree.Element(f"{{{OWNER}}}pubsub", nsmap={None: OWNER})
            wrapper.append(configure)
            return await self._answer(routed, wrapper)
        if routed.type != "set":
            raise StanzaError("bad-request", f"<{name}/> is a set")
        if name == "configure":
            new = self._options(forms.find(request), config, NODE_CONFIG)
            await self.server.db.write(store.configure_node, username, node, new)
        elif name == "delete":
            await self.server.db.write(store.delete_node, username, node)
            self.notifier.node_event(routed.to_bare, node, config, "delete")
        elif name == "purge":
            await self.server.db.write(store.purge, username, node)
            self.notifier.node_event(routed.to_bare, node, config, "purge")
        else:
            raise pubsub_error("feature-not-implemented", "unsupported", f"PEP does not support <{name}/>")
        return await self._answer(routed, None)

    async def disco_items(self, routed: Routed) -> bool:
        """XEP-0163 §7.2 / XEP-0060 §5.2: the nodes the requester may retrieve items from."""
        if routed.type != "get" or routed.payload.get("node"):  # type: ignore[union-attr]
            return False
        owner = routed.to_bare
        if allowed(self.server, owner, routed.from_.bare, NodeConfig("presence")) is not None:
            return False   # a stranger: features/disco.py keeps the account undiscoverable
        query = etree.Element(f"{{{ns.DISCO_ITEMS}}}query", nsmap={None: ns.DISCO_ITEMS})
        for node, config in self.server.db.read(store.list_nodes, owner.local):
            if allowed(self.server, owner, routed.from_.bare, config) is None:
                etree.SubElement(query, f"{{{ns.DISCO_ITEMS}}}item", jid=str(owner), node=node)
        await self.server.reply(routed, iq_result(routed.el, query))
        return True

    # ---- requests ---------------------------------------------------------------------------

    def _items(self, routed: Routed, request: Element) -> Element:
        """§6.5: all items, the newest max_items, or the ones asked for by id."""
        owner, node = routed.to_bare, _node(request)
        config = self.server.db.read(store.get_node, owner.local, node)
        if config is None:
            raise StanzaError("item-not-found", f"no node {node}")
        if (refused := allowed(self.server, owner, routed.from_.bare, config)) is not None:
            raise refused
        ids = [item.get("id") or "" for item in request.iterfind(f"{{{PUBSUB}}}item")]
        if ids:
            found = self.server.db.read(store.items_by_id, owner.local, node, ids)
            if not found:
                raise StanzaError("item-not-found", f"no such item in {node}")
        else:
            found = self.server.db.read(store.items, owner.local, node, _max_items(request))
        pubsub = etree.Element(f"{{{PUBSUB}}}pubsub", nsmap={None: PUBSUB})
        listed = sub(pubsub, f"{{{PUBSUB}}}items", node=node)
        for item in found:
            listed.append(pep_notify.item_element(PUBSUB, item))
        return pubsub

    async def _publish(self, routed: Routed, request: Element) -> Element:
        """§7.1 with auto-create (XEP-0163 §4.4) and publish-options preconditions (§7.1.5)."""
        username, node = routed.to_bare.local, _node(request)
        item = request.find(f"{{{PUBSUB}}}item")
        payload = _payload(item)
        data = serialize(payload)
        if len(data) > self.limits.max_item_bytes:
            raise pubsub_error("not-acceptable", "payload-too-big",
                               f"an item may have at most {self.limits.max_item_bytes} bytes, not {len(data)}")
        existing = self.server.db.read(store.get_node, username, node)
        options = routed.payload.find(f"{{{PUBSUB}}}publish-options")  # type: ignore[union-attr]
        form = forms.find(options) if options is not None else None
        config = self._options(form, existing or NodeConfig(), PUBLISH_OPTIONS)
        if existing is not None and config != existing:
            raise pubsub_error("conflict", "precondition-not-met",
                               f"node {node} exists with another configuration ({_describe(existing)})")
        if existing is None and self.server.db.read(store.count_nodes, username) >= self.limits.max_nodes_per_user:
            raise StanzaError("resource-constraint", f"an account may have at most {self.limits.max_nodes_per_user}"
                              " PEP nodes")
        item_id = (item.get("id") if item is not None else None) or uuid.uuid4().hex
        await self.server.db.write(store.publish, username, node, item_id, data, config, existing is None)
        self.notifier.published(routed.to_bare, node, config, store.Item(item_id, data, 0.0))
        pubsub = etree.Element(f"{{{PUBSUB}}}pubsub", nsmap={None: PUBSUB})
        sub(sub(pubsub, f"{{{PUBSUB}}}publish", node=node), f"{{{PUBSUB}}}item", id=item_id)
        return pubsub

    async def _retract(self, routed: Routed, request: Element) -> None:
        """§7.2: the owner removes items; contacts are told (XEP-0163 nodes notify on retract)."""
        username, node = routed.to_bare.local, _node(request)
        config = self.server.db.read(store.get_node, username, node)
        if config is None:
            raise StanzaError("item-not-found", f"no node {node}")
        ids = [item.get("id") for item in request.iterfind(f"{{{PUBSUB}}}item")]
        if not ids or not all(ids):
            raise pubsub_error("bad-request", "item-required", "say which item to retract: <item id=.../>")
        for item_id in ids:
            if not await self.server.db.write(store.retract, username, node, item_id):
                raise StanzaError("item-not-found", f"no item {item_id} in {node}")
            self.notifier.retracted(routed.to_bare, node, config, item_id)

    def _options(self, x: Element | None, base: NodeConfig, form_type: str) -> NodeConfig:
        """A node configuration from a publish-options or node_config form, starting from `base`
        (fields the form does not mention keep their value; unknown fields are ignored)."""
        if x is None:
            return base
        try:
            values = forms.submitted(x)
            if (forms.single(values, "FORM_TYPE") or form_type) != form_type:
                raise forms.FormError(f"the form's FORM_TYPE must be {form_type}")
            access = forms.single(values, "pubsub#access_model") or base.access_model
            persist = forms.boolean(values, "pubsub#persist_items", base.persist_items)
            max_items = self._max_items_option(forms.single(values, "pubsub#max_items"), base.max_items)
        except forms.FormError as exc:
            raise StanzaError("bad-request", str(exc)) from None
        if access not in store.ACCESS_MODELS:
            raise pubsub_error("not-acceptable", "unsupported-access-model",
                               f"access model {access!r} is not supported: {', '.join(store.ACCESS_MODELS)}")
        return NodeConfig(access, persist, max_items)

    def _max_items_option(self, value: str | None, default: int) -> int:
        """A number, or "max": the most a node may keep; more than that counts as the limit."""
        cap = self.limits.max_items_per_node
        if value is None:
            return default
        if value == "max":
            return cap
        if not value.isdigit() or int(value) < 1:
            raise forms.FormError(f"pubsub#max_items must be a positive number or 'max', not {value!r}")
        return min(int(value), cap)

    async def _answer(self, routed: Routed, payload: Element | None) -> bool:
        await self.server.reply(routed, iq_result(routed.el, payload))
        return True


def _only_child(payload: Element | None) -> Element:
    children = [c for c in (payload if payload is not None else ()) if isinstance(c.tag, str)
                and etree.QName(c).localname not in ("publish-options", "options")]
    if len(children) != 1:
        raise StanzaError("bad-request", "a pubsub request has exactly one action element")
    return children[0]


def _node(request: Element) -> str:
    node = request.get("node")
    if not node:
        raise pubsub_error("bad-request", "nodeid-required", "PEP requests name a node")
    return node


def _payload(item: Element | None) -> Element:
    children = [] if item is None else [c for c in item if isinstance(c.tag, str)]
    if not children:
        raise pubsub_error("bad-request", "item-required" if item is None else "payload-required",
                           "publish one <item/> with one payload element")
    if len(children) > 1:
        raise pubsub_error("bad-request", "invalid-payload", "an item has exactly one payload element")
    return children[0]


def _max_items(request: Element) -> int | None:
    value = request.get("max_items")
    if value is None:
        return None
    if not value.isdigit():
        raise StanzaError("bad-request", f"max_items must be a number, not {value!r}")
    return int(value)


def _config_fields(config: NodeConfig, cap: int) -> list[forms.Field]:
    return [forms.Field("pubsub#access_model", "list-single", values=(config.access_model,)),
            forms.Field("pubsub#persist_items", "boolean", values=("1" if config.persist_items else "0",)),
            forms.Field("pubsub#max_items", values=(str(config.max_items),), desc=f"at most {cap}")]


def _describe(config: NodeConfig) -> str:
    return (f"access_model {config.access_model}, persist_items {int(config.persist_items)},"
            f" max_items {config.max_items}")


__all__ = ["ERRORS", "EVENT", "OWNER", "PUBSUB", "setup"]
