"""End-to-end encrypted chat on top of the client runner (docs/client.md, "Encrypted chat";
the format is docs/e2e.md).

SecureClient owns a ClientRunner and adds what encryption needs: after every fresh login it makes
sure this device is in the account's published device list and fetches the roster; `send` seals a
message for every active device of the recipient and this account's other devices (fetching the
recipient's keys first when none are known); incoming messages are opened with the KeyStore and
the ReplayGuard. A message that cannot be opened becomes an Incoming with a `problem`, logged as a
warning with the reason (never the plaintext): it is shown as failed, never dropped, never a crash.
The history keeps the plaintext: the client's database is the user's; only the server must not
see it.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import trio
from lxml import etree

from appliance.client import caps, e2e
from appliance.client.e2e import (FALLBACK_BODY, E2EError, KeyChanged, NotForThisDevice, Replayed,
                                  Tampered, UnknownDevice, bare)
from appliance.client.e2e_devices import (DEVICES_NODE, PUBSUB, BadDeviceList, fetch_request,
                                          parse_device_list, publish_request)
from appliance.client.invite import record_invite_keys, request_contact_invite
from appliance.client.keys import KeyStore, ReplayGuard
from appliance.client.link import StanzaRefused
from appliance.client.runner import ClientRunner, Status, StatusChange
from appliance.client.state import ClientState, RosterItem, roster_items
from appliance.client.stream import LinkLost
from appliance.pairing.invites import parse_uri
from appliance.proto import ns
from appliance.proto.errors import StanzaError
from appliance.proto.stanza import Element, error_reply, iq_result, make, sub

log = logging.getLogger(__name__)

PUBSUB_EVENT = f"{PUBSUB}#event"
_PROBLEMS: dict[type[E2EError], str] = {
    Tampered: "tampered", Replayed: "replayed", UnknownDevice: "unknown-device",
    KeyChanged: "key-changed", NotForThisDevice: "not-for-this-device",
}


@dataclass(frozen=True)
class Incoming:
    peer: str              # bare JID of the other party
    body: str              # plaintext, a plain message's body, or for a problem what is wrong
    encrypted: bool
    trust: str | None      # "verified" | "tofu" for decrypted messages, None for plain ones
    stamp: float           # unix time (the <delay/> stamp for offline messages)
    problem: str | None    # None, or "tampered" | "replayed" | "unknown-device" | "key-changed" |
                           # "not-for-this-device"


class NoKeys(Exception):
    """The contact has published no device keys: a message to them cannot be encrypted."""


class SecureClient:
    def __init__(self, state: ClientState, *, on_message: Callable[[Incoming], Any],
                 on_status: Callable[[StatusChange], Any] | None = None,
                 on_key_change: Callable[[str, list[int]], Any] | None = None,
                 **runner_options: Any) -> None:
        self.state = state
        self.keys = KeyStore(state.conn)
        self.replay_guard = ReplayGuard(state.conn)
        self.device = self.keys.own_device()
        self.on_message = on_message
        self.on_status = on_status
        self.on_key_change = on_key_change
        self.runner = ClientRunner(state, on_stanza=self._on_stanza, on_status=self._status_changed,
                                   **runner_options)
        self.runner.presence_children.append(caps.caps_element())  # so PEP sends device lists
        self._ready = trio.Event()      # online, with this device published
        self._nursery: trio.Nursery | None = None

    @property
    def jid(self) -> str:
        return bare(self.state.account_jid() or "")

    # ---- the connection ------------------------------------------------------------------------------

    async def run(self) -> Status:
        """Like ClientRunner.run; after each fresh login this device is published."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            status = await self.runner.run()
            nursery.cancel_scope.cancel()
        return status

    async def wait_online(self) -> None:
        await self._ready.wait()

    def _status_changed(self, change: StatusChange) -> None:
        if change.status != Status.ONLINE and self._ready.is_set():
            self._ready = trio.Event()
        if change.status == Status.ONLINE and change.resumed:
            self._ready.set()
        elif change.status == Status.ONLINE and self._nursery is not None:
            self._nursery.start_soon(self._after_login)
        if self.on_status is not None:
            self.on_status(change)

    async def _after_login(self) -> None:
        """Fetch the roster and publish this device if the account's list lacks it."""
        try:
            query = make("iq", type_="get")
            sub(query, f"{{{ns.ROSTER}}}query")
            result = (await self._iq(query)).find(f"{{{ns.ROSTER}}}query")
            self.state.set_roster(roster_items(result) if result is not None else [])
            enable = make("iq", type_="set")
            sub(enable, f"{{{ns.CARBONS}}}enable")   # copies of what our other devices send
            await self._iq(enable)
            devices = await self._device_list(self.jid)
            mine = self.device.public_key
            if devices.get(self.device.device_id) != mine:
                devices[self.device.device_id] = mine
                await self._iq(publish_request(devices, "e2e-publish"))
            self.keys.remember(self.jid, devices)
            self._ready.set()
        except (LinkLost, StanzaRefused, trio.TooSlowError) as exc:
            log.warning("setting up the encrypted session failed: %s", exc)  # the runner reconnects

    async def _iq(self, request: Element) -> Element:
        stream = self.runner.stream
        if stream is None:
            raise LinkLost("offline")
        return await stream.iq(request)

    async def _device_list(self, jid: str) -> dict[int, bytes]:
        """`jid`'s published devices ({} when it has published none)."""
        try:
            answer = await self._iq(fetch_request(jid, f"e2e-fetch-{time.monotonic_ns()}"))
        except StanzaRefused as exc:
            if exc.condition == "item-not-found":
                return {}
            raise
        item = answer.find(f".//{{{PUBSUB}}}item")
        return parse_device_list(item) if item is not None else {}

    async def _refresh(self, jid: str) -> None:
        """Fetch `jid`'s device list into the key store; changed keys are reported."""
        self._remember(jid, await self._device_list(jid))

    def _remember(self, jid: str, devices: dict[int, bytes]) -> None:
        changes = self.keys.remember(jid, devices)
        if changes.changed and self.on_key_change is not None:
            self.on_key_change(bare(jid), changes.changed)

    # ---- sending ----------------------------------------------------------------------------------------

    async def send(self, to: str, body: str) -> str:
        """Queue `body` encrypted to `to`; returns the message id. Raises NoKeys when `to` has
        published no device, KeyChanged while one of the devices has an unaccepted new key."""
        to = bare(to)
        if not any(k.active for k in self.keys.devices_of(to).values()):
            await self._refresh(to)
        if not any(k.active for k in self.keys.devices_of(to).values()):
            raise NoKeys(f"{to} has published no encryption keys")
        encrypted = e2e.encrypt(body, sender=self.device, recipients=self.keys.devices_of(to),
                                own_devices=self.keys.devices_of(self.jid), from_jid=self.jid,
                                to_jid=to, now=time.time())
        children = [c for c in e2e.message_children(encrypted) if c.tag != f"{{{ns.CLIENT}}}body"]
        message_id = await self.runner.send_message(to, FALLBACK_BODY, children)
        self._history_body(to, "out", message_id, body)
        return message_id

    async def send_plain(self, to: str, body: str) -> str:
        return await self.runner.send_message(bare(to), body)

    def _history_body(self, peer: str, direction: str, stanza_id: str | None, body: str) -> None:
        """Replace the fallback text the runner stored with the plaintext (the user's own db)."""
        with self.state.conn:
            self.state.conn.execute(
                "UPDATE messages SET body = ? WHERE peer = ? AND direction = ? AND stanza_id = ?",
                (body, peer, direction, stanza_id))

    # ---- receiving -------------------------------------------------------------------------------------

    async def _on_stanza(self, stanza: Element) -> None:
        kind = etree.QName(stanza).localname
        if kind == "iq" and stanza.get("type") in ("get", "set"):
            await self._answer_iq(stanza)
        elif kind == "message":
            await self._on_message(stanza)

    async def _answer_iq(self, iq: Element) -> None:
        """The one place requests to this client are answered: disco#info (XEP-0115 caps), roster
        pushes applied; every other request gets service-unavailable."""
        query = iq.find(f"{{{ns.ROSTER}}}query")
        info = iq.find(f"{{{ns.DISCO_INFO}}}query")
        if info is not None and iq.get("type") == "get" and caps.answers(info.get("node")):
            reply = iq_result(iq, caps.disco_info(info.get("node")))
        elif query is not None and iq.get("type") == "set" and bare(iq.get("from") or self.jid) == self.jid:
            roster = {item.jid: item for item in self.state.roster()}
            for item in roster_items(query):
                roster.pop(item.jid, None)
                if item.subscription != "remove":
                    roster[item.jid] = item
            self.state.set_roster(list(roster.values()))
            reply = iq_result(iq)
        else:
            reply = error_reply(iq, StanzaError("service-unavailable", "this client does not offer that"))
        if self.runner.stream is not None:
            await self.runner.stream.send(reply)

    async def _on_message(self, stanza: Element) -> None:
        event = stanza.find(f"{{{PUBSUB_EVENT}}}event/{{{PUBSUB_EVENT}}}items[@node='{DEVICES_NODE}']")
        if event is not None:
            return self._device_event(stanza, event)
        sent = stanza.find(f"{{{ns.CARBONS}}}sent/{{{ns.FORWARD}}}forwarded/{{{ns.CLIENT}}}message")
        if sent is not None:
            return await self._sent_carbon(stanza, sent)
        body = stanza.findtext(f"{{{ns.CLIENT}}}body")
        peer = bare(stanza.get("from") or self.jid)
        if stanza.find(f"{{{e2e.NS}}}encrypted") is not None:
            incoming = await self._decrypt(stanza, peer)
            if incoming.problem is None:
                self._history_body(peer, "in", stanza.get("id"), incoming.body)
        elif body is not None:
            incoming = Incoming(peer, body, False, None, _stamp(stanza), None)
        else:
            return
        result = self.on_message(incoming)
        if inspect.isawaitable(result):
            await result

    async def _sent_carbon(self, carbon: Element, message: Element) -> None:
        """A message one of our other devices sent: into the history (as sent), decrypted with
        our own account's device keys. Only the server of our own account may send carbons."""
        if bare(carbon.get("from") or self.jid) != self.jid or message.find(f"{{{e2e.NS}}}encrypted") is None:
            return
        peer = bare(message.get("to") or "")
        incoming = await self._decrypt(message, self.jid)
        if incoming.problem is None:
            self.state.add_message(peer, "out", incoming.body, incoming.stamp, message.get("id"))

    def _device_event(self, stanza: Element, items: Element) -> None:
        item = items.find(f"{{{PUBSUB_EVENT}}}item")
        if item is None:
            return
        try:
            self._remember(bare(stanza.get("from") or ""), parse_device_list(item))
        except BadDeviceList as exc:
            log.warning("ignored a malformed device list from %s: %s", stanza.get("from"), exc)

    async def _decrypt(self, stanza: Element, peer: str) -> Incoming:
        stamp = _stamp(stanza)
        try:
            try:
                opened = self._open(stanza, peer)
            except (UnknownDevice, Tampered):  # maybe a key we do not know yet: fetch, try again
                await self._refresh(peer)      # (a changed key is reported to on_key_change here)
                opened = self._open(stanza, peer)
        except E2EError as exc:
            problem = _PROBLEMS.get(type(exc), "tampered")
            log.warning("could not open an encrypted message from %s (%s): %s", peer, problem, exc)
            return Incoming(peer, f"This message could not be opened: {exc}", True, None, stamp, problem)
        except (LinkLost, StanzaRefused, trio.TooSlowError, BadDeviceList) as exc:
            log.warning("could not fetch the keys of %s: %s", peer, exc)
            return Incoming(peer, f"The sender's keys could not be fetched: {exc}", True, None, stamp,
                            "unknown-device")
        return Incoming(peer, opened.body, True, opened.trust, stamp, None)

    def _open(self, stanza: Element, peer: str) -> e2e.Decrypted:
        return e2e.decrypt(stanza, my_device=self.device, sender_devices=self.keys.devices_of(peer),
                           my_jid=self.jid, replay_guard=self.replay_guard, now=time.time())

    # ---- contacts and trust --------------------------------------------------------------------------

    def contacts(self) -> list[RosterItem]:
        return self.state.roster()

    def devices(self, jid: str) -> list[tuple[int, str, str]]:
        """(device id, fingerprint, trust) of every known device of `jid`."""
        return [(device_id, e2e.fingerprint(peer.public_key), peer.trust)
                for device_id, peer in sorted(self.keys.devices_of(jid).items())]

    def accept_key_change(self, jid: str, device_id: int) -> None:
        self.keys.accept_change(jid, device_id)

    async def contact_invite(self) -> str:
        """A contact-invite URI from the server, with this account's device fingerprints."""
        stream = self.runner.stream
        if stream is None:
            raise LinkLost("offline: a contact invite comes from the server")
        devices = {d: peer.public_key for d, peer in self.keys.devices_of(self.jid).items() if peer.active}
        return await request_contact_invite(stream, devices)

    async def add_contact(self, uri: str) -> None:
        """Ask a contact invite's inviter to become a contact (XEP-0379: the server approves a
        request carrying the token); the invite's key fingerprints make their devices verified.
        The roster push that follows shows up in contacts()."""
        invite = parse_uri(uri.strip())
        if invite.action != "roster" or not invite.token:
            raise ValueError("not a contact invite (xmpp:someone@domain?roster;preauth=...)")
        stream = self.runner.stream
        if stream is None:
            raise LinkLost("offline: adding a contact needs the server")
        record_invite_keys(self.state, uri)
        request = make("presence", to=invite.jid, type_="subscribe")
        sub(request, f"{{{ns.PARS}}}preauth", token=invite.token)
        await stream.send(request)


def _stamp(stanza: Element) -> float:
    """The XEP-0203 delay stamp of an offline message, else now."""
    delay = stanza.find(f"{{{ns.DELAY}}}delay")
    try:
        return datetime.fromisoformat(delay.get("stamp", "")).timestamp() if delay is not None else time.time()
    except ValueError:
        return time.time()
