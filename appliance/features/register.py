"""XEP-0077 in-band registration: sign-up before login (when enabled, or on a stream that presented
a usable invite token, XEP-0445: features/invites.py), password change and account removal after
login. `appliance user` does the same from the command line."""

from __future__ import annotations

import logging
from typing import Any

import trio
from lxml import etree
from scramp import ScramException

from appliance.core.events import Event
from appliance.core.router import Routed, Target
from appliance.core.server import Server
from appliance.features import invites
from appliance.proto import ns
from appliance.proto.c2s import Stage
from appliance.proto.errors import StanzaError, StreamError
from appliance.proto.jid import JID, InvalidJID, normalise_local
from appliance.proto.stanza import Element, error_reply, iq_result
from appliance.store import users

log = logging.getLogger("appliance.register")
Q = f"{{{ns.REGISTER}}}"


def setup(server: Server) -> None:
    config = server.config

    def feature(stage: Stage, session: object) -> Element | None:
        if stage is Stage.PRE_AUTH and config.allow_registration:
            return etree.Element(f"{{{ns.REGISTER_FEATURE}}}register", nsmap={None: ns.REGISTER_FEATURE})
        return None

    async def before_login(iq: Element, state: dict[str, Any]) -> Element:
        try:
            if not (config.allow_registration or state.get(invites.MAY_REGISTER)):
                raise StanzaError("service-unavailable", "registration is disabled on this server")
            presented = state.get(invites.PRESENTED)
            if iq.get("type") == "get":
                preset = invites.preset_username(server, presented)
                return iq_result(iq, _form(instructions="Choose a username and password.", username=preset))
            if iq.get("type") != "set":
                raise StanzaError("bad-request")
            username, password = _credentials(iq)
            registrations = server.auth.registrations
            if registrations.blocked(state["address"]):
                raise StanzaError("policy-violation", "too many accounts created from your address; try later")
            await _create(server, username, password, presented)
            registrations.record(state["address"])
            log.info("registered %s@%s in-band", username, server.domain)
            if presented is not None:  # one account per token presented
                del state[invites.PRESENTED], state[invites.MAY_REGISTER]
            return iq_result(iq)
        except StanzaError as error:
            return error_reply(iq, error)

    async def after_login(routed: Routed) -> bool:
        assert routed.origin is not None
        username = routed.origin.username
        if routed.type == "get":
            form = _form(registered=True)
            etree.SubElement(form, Q + "username").text = username
            await server.reply(routed, iq_result(routed.el, form))
        elif routed.type == "set" and routed.payload is not None and routed.payload.find(Q + "remove") is not None:
            await _remove(server, routed, username)
        elif routed.type == "set":
            await _change_password(server, routed, username)
        else:
            raise StanzaError("bad-request")
        return True

    server.add_stream_feature(feature)
    server.add_preauth_iq(ns.REGISTER, before_login)
    server.hook("iq", ns.REGISTER, after_login, targets=frozenset({Target.SERVER, Target.ACCOUNT}))
    server.add_disco_feature(ns.REGISTER)


def _form(*, instructions: str | None = None, registered: bool = False, username: str | None = None) -> Element:
    query = etree.Element(Q + "query", nsmap={None: ns.REGISTER})
    if registered:
        etree.SubElement(query, Q + "registered")
        return query
    if instructions:
        etree.SubElement(query, Q + "instructions").text = instructions
    etree.SubElement(query, Q + "username").text = username  # an invite's preset name, if any
    etree.SubElement(query, Q + "password")
    return query


def _credentials(iq: Element) -> tuple[str, str]:
    query = iq.find(Q + "query")
    username = query.findtext(Q + "username") if query is not None else None
    password = query.findtext(Q + "password") if query is not None else None
    if not username or not password:
        raise StanzaError("not-acceptable", "username and password are required")
    try:
        return normalise_local(username.strip()), password
    except InvalidJID as exc:
        raise StanzaError("not-acceptable", f"invalid username: {exc}") from None


async def _derive(server: Server, password: str) -> users.Credentials:
    """PBKDF2 for two hashes takes milliseconds: derive in a thread, outside the write transaction."""
    try:
        return await trio.to_thread.run_sync(users.make_credentials, password, server.config.scram_iterations)
    except ScramException as exc:  # SASLprep refuses the password (RFC 4013: bidi, unassigned...)
        raise StanzaError("not-acceptable", f"password not allowed: {exc}") from None


async def _create(server: Server, username: str, password: str, presented: invites.Presented | None) -> None:
    """The account, and the use of the invite token the stream presented, in one transaction."""
    credentials = await _derive(server, password)
    try:
        friendship = await server.db.write(invites.sign_up, username, credentials, presented, server.domain,
                                           server.config.limits.roster_items)
    except users.UserExists:
        raise StanzaError("conflict", "that username is taken") from None
    if friendship is not None:
        invites.welcome(server, username, friendship)


async def _change_password(server: Server, routed: Routed, username: str) -> None:
    given, password = _credentials(routed.el)
    if given != username:
        raise StanzaError("not-allowed", "you can change only your own password")
    credentials = await _derive(server, password)
    await server.db.write(users.store_credentials, username, credentials)
    log.info("%s changed their password", routed.from_.bare)
    await server.reply(routed, iq_result(routed.el))


async def _remove(server: Server, routed: Routed, username: str) -> None:
    """XEP-0077 §3.2: the answer is queued first, then the account goes."""
    await server.reply(routed, iq_result(routed.el))
    log.info("%s removed their account", routed.from_.bare)
    await remove_account(server, username)


async def remove_account(server: Server, username: str) -> None:
    """Delete an account while the server runs (XEP-0077 removal, the admin page). Order matters:
    the sessions are unbound while the roster still exists (contacts see them go offline); the
    data is deleted; the streams are closed last, because the caller may be running in one of
    those sessions' own reader, which closing cancels."""
    sessions = server.sessions.of(JID(username, server.domain))
    for session in sessions:
        await server.unbind(session)
    await server.db.write(users.delete_user, username)
    await server.emit(Event.USER_DELETED, username)
    for session in sessions:
        session.terminate(StreamError("not-authorized", "this account has been removed"))
