"""Redeeming invites over XMPP (docs/pairing.md, "Redeeming invites over XMPP").

- XEP-0445: before login a client checks the stream feature `<register xmlns='urn:xmpp:ibr-token:0'/>`
  (Conversations 2023 checks the older `urn:xmpp:invite` of XEP-0401: both are advertised, whatever
  `allow_registration` says), sends `<preauth xmlns='urn:xmpp:pars:0' token=.../>` in an IQ set,
  and then registers with XEP-0077 (features/register.py), which calls `sign_up` here.
- XEP-0379 §3.4: an existing account's `<presence type='subscribe'>` carrying a contact invite's
  token is approved on the inviter's behalf, and the inviter is subscribed back.

The expiry is checked once, when the token is presented (XEP-0445 §4); a use is counted only in
the write transaction that creates the account (or makes the contacts), so a failed registration
leaves the token as it was, and a token used up meanwhile by another stream refuses it. A token is
never logged in full: its first four characters say which one it was.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from lxml import etree

from appliance.core.router import Routed, Target
from appliance.core.server import FeatureBuilder, Server
from appliance.features import presence, roster
from appliance.features.subscription import Change, State, describe
from appliance.pairing.invites import CONTACT, Invite
from appliance.proto import ns
from appliance.proto.c2s import Stage
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID, InvalidJID, normalise_local
from appliance.proto.stanza import Element, error_reply, iq_result, make
from appliance.store import invites as store
from appliance.store import roster as roster_store
from appliance.store import users

log = logging.getLogger("appliance.invites")

PRESENTED = "invite"        # the pre-login state key of a stream that presented a usable token
MAY_REGISTER = "may_register"  # the pre-login state flag features/register.py honours

# XEP-0445 §4 answers an unknown, invalid or expired token with item-not-found; the text says which.
_REFUSED = {"unknown": "unknown invite token", "expired": "this invite has expired",
            "revoked": "this invite has been revoked", "used up": "this invite has been used up"}


@dataclass(frozen=True)
class Presented:
    """A token a stream presented before registering, and when it was found usable."""
    token: str
    checked_at: float


@dataclass(frozen=True)
class Friendship:
    """What one redemption changed in two rosters, for the pushes and the log after the commit."""
    invite: Invite
    changes: list[tuple[str, str, Change]]   # (owner's localpart, peer's bare JID, change)


def setup(server: Server) -> None:
    for namespace in (ns.IBR_TOKEN, ns.INVITE):
        server.add_stream_feature(_register_feature(namespace))

    async def preauth(iq: Element, state: dict[str, Any]) -> Element:
        try:
            state[PRESENTED] = _check_token(server, iq, state["address"])
            state[MAY_REGISTER] = True
            return iq_result(iq)
        except StanzaError as error:
            return error_reply(iq, error)

    async def subscribe_with_token(routed: Routed) -> bool:
        return await _contact_invite(server, routed)

    server.add_preauth_iq(ns.PARS, preauth)
    # Before features/subscription.py (priority 10), which handles the request when we do not.
    server.hook("presence", ns.PARS, subscribe_with_token, targets=frozenset({Target.BARE, Target.FULL}),
                priority=20)


def _register_feature(namespace: str) -> FeatureBuilder:
    def build(stage: Stage, session: object) -> Element | None:
        if stage is Stage.PRE_AUTH:
            return etree.Element(f"{{{namespace}}}register", nsmap={None: namespace})
        return None
    return build


def _short(token: str) -> str:
    return f"{token[:4]}…"


def _check_token(server: Server, iq: Element, address: str) -> Presented:
    """XEP-0445 §4: the token must be usable now; nothing is counted yet."""
    if iq.get("type") != "set":
        raise StanzaError("bad-request", "a token is presented in an IQ set")
    token = iq[0].get("token")
    if not token:
        raise StanzaError("bad-request", "the preauth element carries no token")
    now = time.time()
    try:
        invite = server.db.read(store.usable_invite, token, now)
    except store.InviteUnusable as why:
        log.info("%s presented invite %s, refused: %s", address, _short(token), why)
        raise StanzaError("item-not-found", _REFUSED[str(why)]) from None
    log.info("%s presented %s invite %s", address, invite.kind, _short(token))
    return Presented(token, now)


def preset_username(server: Server, presented: Presented | None) -> str | None:
    """The username an invite presets, for the registration form."""
    if presented is None:
        return None
    invite = server.db.read(store.get_invite, presented.token)
    return invite.username if invite is not None else None


# ---- registration (called by features/register.py) -------------------------------------------------

def sign_up(conn: sqlite3.Connection, username: str, credentials: users.Credentials,
            presented: Presented | None, domain: str, roster_limit: int) -> Friendship | None:
    """One write transaction: the token's use, the account, and what the invite grants (admin,
    contacts). Raises StanzaError, or users.UserExists for a taken name; nothing is kept then."""
    now = time.time()
    invite = _redeem_for_account(conn, presented, username) if presented is not None else None
    own = invite.token if invite is not None else None
    if any(other.token != own and other.username and _same_name(other.username, username)
           for other in store.list_invites(conn, now)):
        raise StanzaError("conflict", f"the username {username} is kept for someone invited")  # XEP-0445 §5
    if invite is not None and invite.reset:  # an admin's password reset: the account exists already
        if not users.store_credentials(conn, username, credentials):
            raise StanzaError("item-not-found", f"there is no account {username} to reset any more")
        return Friendship(invite, [])
    users.insert_user(conn, username, credentials)
    if invite is None:
        return None
    if invite.admin:
        store.set_admin(conn, username)
    if invite.inviter is None:  # an administrator's account invite: no contact comes with it
        return Friendship(invite, [])
    return Friendship(invite, _befriend_both(conn, username, invite.inviter, domain, roster_limit))


def _redeem_for_account(conn: sqlite3.Connection, presented: Presented, username: str) -> Invite:
    # Checked as of when the token was presented: expiry no longer matters (XEP-0445 §4), but a
    # revocation or the last use by another stream since then does.
    try:
        invite = store.redeem(conn, presented.token, presented.checked_at)
    except store.InviteUnusable as why:
        log.info("registration of %s with invite %s refused: %s", username, _short(presented.token), why)
        raise StanzaError("forbidden", _REFUSED[str(why)]) from None
    if invite.username and not _same_name(invite.username, username):
        raise StanzaError("not-acceptable", f"this invite is for the username {invite.username}")
    return invite


def _same_name(preset: str, username: str) -> bool:
    try:
        return normalise_local(preset) == username
    except InvalidJID:
        return preset == username


def welcome(server: Server, username: str, friendship: Friendship) -> None:
    """After the commit: log the redemption, push the inviter's new roster item."""
    invite = friendship.invite
    log.info("%s@%s registered with %s invite %s from %s%s", username, server.domain, invite.kind,
             _short(invite.token), invite.inviter or "an administrator", " as an administrator" if invite.admin else "")
    _announce(server, friendship)


# ---- XEP-0379: a contact invite used by an existing account ---------------------------------------

async def _contact_invite(server: Server, routed: Routed) -> bool:
    """Approve a subscription request carrying a usable contact invite of its addressee; False
    leaves it to features/subscription.py (a bad token: the inviter is asked as usual)."""
    preauth = routed.el.find(f"{{{ns.PARS}}}preauth")
    token = preauth.get("token") if preauth is not None else None
    if routed.type != "subscribe" or routed.origin is None or routed.to is None or not token:
        return False
    invitee, inviter = routed.from_.bare, routed.to.bare
    if invitee == inviter:
        return False
    limit = server.config.limits.roster_items
    try:
        friendship = await server.db.write(_redeem_contact, token, invitee.local, inviter.local,
                                           server.domain, limit)
    except store.InviteUnusable as why:
        log.info("%s sent invite %s to %s, not approved: %s", invitee, _short(token), inviter, why)
        return False
    log.info("%s used contact invite %s from %s", invitee, _short(token), inviter)
    _announce(server, friendship)
    # Delivered, not routed: subscription.py would drop an approval that changes nothing (both
    # sides are already 'both'), yet the invitee's client waits for the answer to its request.
    for session in server.sessions.available(invitee):
        server.deliver(session, make("presence", to=invitee, from_=inviter, type_="subscribed"))
    await presence.send_available(server, inviter, invitee)
    await presence.send_available(server, invitee, inviter)
    return True


def _redeem_contact(conn: sqlite3.Connection, token: str, invitee: str, inviter: str, domain: str,
                    roster_limit: int) -> Friendship:
    now = time.time()
    invite = store.usable_invite(conn, token, now)
    if invite.kind != CONTACT or invite.inviter != inviter:
        raise store.InviteUnusable(f"not a contact invite from {inviter}")
    store.redeem(conn, token, now)
    return Friendship(invite, _befriend_both(conn, invitee, inviter, domain, roster_limit))


# ---- both ways subscribed ------------------------------------------------------------------------------

def _befriend_both(conn: sqlite3.Connection, user: str, inviter: str, domain: str,
                   limit: int) -> list[tuple[str, str, Change]]:
    pairs = [(inviter, f"{user}@{domain}"), (user, f"{inviter}@{domain}")]
    return [(owner, peer, change) for owner, peer in pairs
            if (change := _befriend(conn, owner, peer, limit)) is not None]


def _befriend(conn: sqlite3.Connection, owner: str, peer: str, limit: int) -> Change | None:
    """Make `peer` a contact of `owner` with subscription 'both' (the roster item keeps its name
    and groups; a waiting request from the peer is answered). None if it already was."""
    item = roster_store.get_item(conn, owner, peer)
    before = State.of(item, roster_store.get_pending_in(conn, owner, peer) is not None)
    after = State(to=True, from_=True)
    if before == after:
        return None
    if item is None and roster_store.count_items(conn, owner) >= limit:
        raise StanzaError("resource-constraint", f"the roster of {owner} is full ({limit} contacts)")
    item = after.applied_to(item or roster_store.RosterItem(peer))
    version = roster_store.set_item(conn, owner, item)
    roster_store.clear_pending_in(conn, owner, peer)
    return Change(before, after, item, version)


def _announce(server: Server, friendship: Friendship) -> None:
    for owner, peer, change in friendship.changes:
        owner_jid, peer_jid = JID(owner, server.domain), JID.parse(peer)
        if change.version is not None:
            roster.push(server, owner_jid, peer, change.item, change.version)
        for line in describe(owner_jid, peer_jid, change.before, change.after):
            log.info(line)

