"""XEP-0357 push notifications: wake a phone whose app is asleep when a message arrives for it.

A client enables push for an app server (`<enable jid=APP-SERVER node=NODE>`, with an optional
publish-options form that is sent back with every push, e.g. the device token's secret). When a
message with a body arrives for the account and none of its sessions can show it (each is
hibernated by XEP-0198, inactive by XEP-0352, or there is none), every registration gets a pubsub
publish IQ from the account's bare JID with the `urn:xmpp:push:summary` form: `message-count`,
`last-message-sender`, and `last-message-body` only when the user allowed it (the boolean field
`appliance#include-body` in the enable form; it is not stored among the publish-options).

Pushes are rate-limited per registration (`[push] min_interval_seconds`): what arrives within the
interval after a push is coalesced into one push sent when the interval ends, counting them all.
An error answer from the app server disables the registration (XEP-0357 §8: the app server
rejected it), except `remote-server-*` errors, which say the app server was not reached (it may come
back). Pushes never hold up delivery: they are queued to the app server's route and answered later.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from dataclasses import dataclass

import trio
from lxml import etree

from appliance.core.events import Event
from appliance.core.router import ALL_TARGETS, ANY, Routed, Target
from appliance.core.server import Server
from appliance.core.session import Session
from appliance.features.csi import STATE as CSI_STATE
from appliance.proto import forms, ns
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID, InvalidJID
from appliance.proto.stanza import Element, iq_result, make, sub
from appliance.store import push as store
from appliance.store.push import Registration

log = logging.getLogger("appliance.push")

PUSH = "urn:xmpp:push:0"
SUMMARY = "urn:xmpp:push:summary"
PUBSUB = "http://jabber.org/protocol/pubsub"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
INCLUDE_BODY = "appliance#include-body"   # our field in the enable form: the user allows bodies
_BODY = f"{{{ns.CLIENT}}}body"
_NOT_REACHED = {"remote-server-not-found", "remote-server-timeout"}
_MAX_WAITING = 10000   # publish IQs awaiting an answer; the oldest is forgotten beyond this


@dataclass
class _Device:
    """What is waiting for one registration's next push."""
    last_sent: float = -math.inf    # trio's clock
    count: int = 0                 # messages since the last push
    sender: str = ""
    body: str | None = None
    timer: bool = False            # a coalesced push is scheduled


def asleep(session: Session) -> bool:
    """The session cannot show a message now: hibernated (no link) or inactive (CSI)."""
    return session.link is None or CSI_STATE in session.state


def setup(server: Server) -> None:
    if not server.config.push.enabled:
        return
    pusher = Pusher(server)
    server.hook("iq", PUSH, pusher.configure, targets=frozenset({Target.ACCOUNT}))
    server.hook("iq", ANY, pusher.answered, targets=ALL_TARGETS, priority=1000)
    server.on(Event.MESSAGE_DELIVERED, pusher.delivered)
    server.on(Event.MESSAGE_OFFLINE, pusher.offline, priority=100)  # before offline storage ends the chain
    server.on(Event.NOTIFICATION_SENT, pusher.notified)
    server.add_disco_feature(PUSH, server=False, account=True)


class Pusher:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.devices: dict[tuple[str, str, str], _Device] = {}
        self.waiting: dict[str, tuple[str, str, str]] = {}   # IQ id -> registration awaiting an answer

    # ---- enable / disable -------------------------------------------------------------------

    async def configure(self, routed: Routed) -> bool:
        if routed.type != "set" or routed.payload is None:
            raise StanzaError("bad-request", "enable and disable are IQ sets")
        name = etree.QName(routed.payload).localname
        username = routed.from_.local
        assert username is not None
        service, node = _service_and_node(routed.payload, required_node=name == "enable")
        if name == "enable":
            options, include_body = _enable_options(routed.payload)
            limit = self.server.config.push.max_registrations_per_user
            try:
                await self.server.db.write(store.enable, username, str(service), node, options,
                                           include_body, time.time(), limit)
            except store.TooManyRegistrations as exc:
                raise StanzaError("resource-constraint", str(exc)) from None
            log.info("%s enabled push to %s (body %s)", username, service, "allowed" if include_body else "withheld")
        elif name == "disable":
            await self.server.db.write(store.disable, username, str(service), node)
            self._forget(username, str(service), node)
        else:
            raise StanzaError("feature-not-implemented", f"no {name!r} in {PUSH}")
        await self.server.reply(routed, iq_result(routed.el))
        return True

    def _forget(self, username: str, service: str, node: str | None) -> None:
        for key in [k for k in self.devices if k[:2] == (username, service) and node in (None, k[2])]:
            del self.devices[key]

    # ---- when to push ---------------------------------------------------------------------------

    async def delivered(self, routed: Routed, sessions: list[Session]) -> None:
        if _wakes(routed) and all(asleep(s) for s in self.server.sessions.of(routed.to_bare)):
            await self.wake_for(routed)

    async def offline(self, routed: Routed) -> None:
        # With a receipt it was stored when it first came (and woke the phone then): it comes
        # round again from a session that ended without acknowledging it.
        if _wakes(routed) and routed.receipt is None:
            await self.wake_for(routed)

    async def notified(self, username: str, stanza: Element) -> None:
        """A notification (features/notifications.py) for a user whose sessions all sleep, or who
        has none: "door open" must reach a phone in a pocket."""
        if all(asleep(s) for s in self.server.sessions.of(JID(username, self.server.domain))):
            await self.wake(username, stanza.get("from") or self.server.domain, stanza.findtext(_BODY))

    async def wake_for(self, routed: Routed) -> None:
        assert routed.to_bare.local is not None
        await self.wake(routed.to_bare.local, str(routed.from_), routed.el.findtext(_BODY))

    async def wake(self, username: str, sender: str, body: str | None) -> None:
        now = trio.current_time()
        for registration in self.server.db.read(store.registrations, username):
            key = (username, registration.service, registration.node)
            device = self.devices.setdefault(key, _Device())
            device.count += 1
            device.sender, device.body = sender, body
            if device.timer:
                continue  # a coalesced push is coming and will count this one
            interval = self.server.config.push.min_interval_seconds
            if now - device.last_sent >= interval:
                await self.send(registration, device)
            else:
                device.timer = True
                trio.lowlevel.spawn_system_task(self._later, registration, device, device.last_sent + interval)

    async def _later(self, registration: Registration, device: _Device, when: float) -> None:
        """The coalesced push at the end of the interval (a system task: it outlives no server)."""
        try:
            await trio.sleep_until(when)
            device.timer = False
            key = (registration.username, registration.service, registration.node)
            if self.devices.get(key) is device and device.count:
                await self.send(registration, device)
        except Exception:
            log.exception("a coalesced push to %s failed", registration.service)

    # ---- the push itself -------------------------------------------------------------------

    async def send(self, registration: Registration, device: _Device) -> None:
        iq_id = f"push-{secrets.token_hex(6)}"
        iq = publish_iq(registration, JID(registration.username, self.server.domain), iq_id,
                        device.count, device.sender, device.body)
        self.waiting[iq_id] = (registration.username, registration.service, registration.node)
        if len(self.waiting) > _MAX_WAITING:  # an app server that never answers must not grow this
            del self.waiting[next(iter(self.waiting))]
        log.info("push to %s for %s: %d message(s)", registration.service, registration.username, device.count)
        device.count, device.last_sent = 0, trio.current_time()
        await self.server.route(iq)

    async def answered(self, routed: Routed) -> bool:
        """The app server's answer to one of our publish IQs (not routed further)."""
        if routed.type not in ("result", "error"):
            return False
        key = self.waiting.pop(routed.el.get("id") or "", None)
        if key is None:
            return False
        if routed.type == "error":
            condition = _condition(routed.el)
            if condition not in _NOT_REACHED:
                username, service, node = key
                await self.server.db.write(store.disable, username, service, node)
                self._forget(username, service, node)
                log.info("%s answered a push with %s: registration of %s disabled", service, condition, username)
        return True


def publish_iq(registration: Registration, user: JID, iq_id: str, count: int, sender: str,
               body: str | None) -> Element:
    """XEP-0357 §7: the publish to the app server's node, with the summary and publish-options."""
    iq = make("iq", to=registration.service, from_=user, type_="set", id_=iq_id)
    pubsub = sub(iq, f"{{{PUBSUB}}}pubsub")
    item = sub(sub(pubsub, f"{{{PUBSUB}}}publish", node=registration.node), f"{{{PUBSUB}}}item")
    fields = [forms.Field("message-count", values=(str(count),)),
              forms.Field("last-message-sender", values=(sender,))]
    if registration.include_body and body is not None:
        fields.append(forms.Field("last-message-body", values=(body,)))
    sub(item, f"{{{PUSH}}}notification").append(forms.build("submit", fields, form_type=SUMMARY))
    if registration.options:
        options = [forms.Field(var, values=tuple(values)) for var, values in registration.options.items()
                   if var != "FORM_TYPE"]
        sub(pubsub, f"{{{PUBSUB}}}publish-options").append(
            forms.build("submit", options, form_type=PUBLISH_OPTIONS))
    return iq


def _wakes(routed: Routed) -> bool:
    """XEP-0357 §7: a message the user would want to see, i.e. one with a body."""
    return routed.kind == "message" and routed.type != "error" and routed.el.find(_BODY) is not None


def _service_and_node(payload: Element, *, required_node: bool) -> tuple[JID, str | None]:
    try:
        service = JID.parse(payload.get("jid") or "")
    except InvalidJID as exc:
        raise StanzaError("bad-request", f"'jid' must be the app server's JID: {exc}") from None
    node = payload.get("node") or None
    if required_node and node is None:
        raise StanzaError("bad-request", "enable needs a 'node'")
    return service, node


def _enable_options(enable: Element) -> tuple[dict[str, list[str]], bool]:
    """The publish-options to store, and whether the user allowed message bodies in pushes."""
    x = forms.find(enable)
    if x is None:
        return {}, False
    try:
        values = forms.submitted(x)
        if (forms.single(values, "FORM_TYPE") or PUBLISH_OPTIONS) != PUBLISH_OPTIONS:
            raise forms.FormError(f"the form's FORM_TYPE must be {PUBLISH_OPTIONS}")
        include_body = forms.boolean(values, INCLUDE_BODY)
    except forms.FormError as exc:
        raise StanzaError("bad-request", str(exc)) from None
    return {k: v for k, v in values.items() if k not in ("FORM_TYPE", INCLUDE_BODY)}, include_body


def _condition(error_iq: Element) -> str:
    error = error_iq.find(f"{{{ns.CLIENT}}}error")
    conditions = [] if error is None else [etree.QName(c).localname for c in error
                                           if etree.QName(c).namespace == ns.STANZA_ERRORS]
    return conditions[0] if conditions else "undefined-condition"
