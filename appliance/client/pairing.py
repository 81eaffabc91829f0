"""Pairing: turn an invite URI (docs/pairing.md) into a stored account.

An account invite (`xmpp:[name@]domain?register;preauth=T;tls-sha256=F`): connect with the
certificate pinned to F, present the token (XEP-0445, before login), register (XEP-0077) with the
preset or given username and a random password nobody ever types. A contact invite
(`xmpp:inviter@domain?roster;preauth=T;ibr=y`): register the same way when this device has no
account yet (the server then makes both contacts), then log in and, unless that already made
them contacts, ask the inviter with the token (XEP-0379), which the server approves for them.
"""

from __future__ import annotations

import secrets

import trio
from lxml import etree

from appliance.client.link import Account, Link, LinkLost, PinMismatch, StanzaRefused, error_of
from appliance.client.negotiation import starttls
from appliance.client.state import ClientState, roster_items
from appliance.client.stream import ClientStream, connect
from appliance.pairing.invites import ParsedUri, normalise_fingerprint, parse_uri
from appliance.proto import ns
from appliance.proto.jid import InvalidJID, normalise_domain, normalise_local
from appliance.proto.stanza import STREAM_CLOSE, Element, iq_result, make, sub, to_stream

PASSWORD_BYTES = 24  # secrets.token_urlsafe(24): 32 characters, 192 bits


class PairingFailed(Exception):
    """Pairing did not work; the message is a sentence a person can act on."""


async def pair(uri: str, state: ClientState, *, host: str | None = None, port: int = 5222,
               username: str | None = None, cafile: str | None = None, timeout: float = 30) -> Account:
    """Register (or befriend) through the invite `uri`, save the account in `state`, return it.
    `host`: where the server is (default: the URI's domain); `username` when the invite presets
    none; `cafile` only matters for an invite without a fingerprint (normal verification)."""
    invite = _parse(uri)
    token = invite.token
    local, _, domain = invite.jid.rpartition("@")
    where = (host or domain, port, _fingerprint(invite), cafile)
    existing = state.load_account()
    if existing is not None and existing.domain != domain:
        raise PairingFailed(f"This device's account {existing.jid} is on another server than the invite "
                            f"({domain}); use another data directory for it.")
    if invite.action == "roster" and existing is not None:
        await _befriend(existing, invite.jid, token, cafile, timeout)
        return existing
    if existing is not None:
        raise PairingFailed(f"This device already has the account {existing.jid}; "
                            "use another data directory for a second account.")
    preset = local if invite.action == "register" else None
    account = await _register(domain, _username(preset or username), token, where, timeout)
    state.save_account(account)
    if invite.action == "roster":
        await _befriend(account, invite.jid, token, cafile, timeout)
    return account


async def login(account: Account, *, cafile: str | None = None, timeout: float = 30) -> ClientStream:
    """Connect and announce ourselves available (so messages to the bare JID reach us)."""
    stream = await connect(account, cafile=cafile, timeout=timeout)
    await stream.send(make("presence"))
    return stream


def _parse(uri: str) -> ParsedUri:
    try:
        invite = parse_uri(uri.strip())
    except ValueError as exc:
        raise PairingFailed(f"This is not an invite link ({exc}).") from None
    if invite.action not in ("register", "roster") or not invite.token:
        raise PairingFailed("This xmpp: link is no invite: it carries no invite token (preauth=...).")
    if invite.action == "roster" and "@" not in invite.jid:
        raise PairingFailed("This contact invite names no inviter.")
    try:
        normalise_domain(invite.jid.rpartition("@")[2])
    except InvalidJID as exc:
        raise PairingFailed(f"The invite names no valid server ({exc}).") from None
    return invite


def _fingerprint(invite: ParsedUri) -> str | None:
    if invite.fingerprint is None:
        return None
    try:
        return normalise_fingerprint(invite.fingerprint)
    except ValueError:
        raise PairingFailed("The invite's certificate fingerprint (tls-sha256) is damaged; "
                            "scan or copy the invite again.") from None


def _username(name: str | None) -> str:
    if not name:
        raise PairingFailed("This invite does not choose a username: give one (username=...).")
    try:
        return normalise_local(name.strip())
    except InvalidJID as exc:
        raise PairingFailed(f"'{name}' cannot be a username: {exc}.") from None


async def _register(domain: str, name: str, token: str,
                    where: tuple[str, int, str | None, str | None], timeout: float) -> Account:
    host, port, fingerprint, cafile = where
    # Each device its own resource: two devices of one account must not replace each other's session.
    account = Account(f"{name}@{domain}", secrets.token_urlsafe(PASSWORD_BYTES), host, port, fingerprint,
                      f"appliance-client-{secrets.token_hex(4)}")
    try:
        with trio.fail_after(timeout):
            link = await Link.open(host, port, domain)
            try:
                await starttls(link, account, cafile)
                await _request(link, _preauth_iq(token), "invite")
                await _request(link, _register_iq(name, account.password), "registration")
                await link.send(STREAM_CLOSE)
            finally:
                await link.abort()
    except PinMismatch as exc:
        raise PairingFailed(f"This is not the server that made the invite, or its certificate changed: "
                            f"{exc}. Nothing was sent to it.") from exc
    except LinkLost as exc:
        raise PairingFailed(f"The connection to {host}:{port} broke during pairing: {exc}.") from exc
    except OSError as exc:
        raise PairingFailed(f"Cannot reach the server at {host}:{port} ({exc.strerror or exc}); "
                            "is this device on the appliance's network?") from exc
    except trio.TooSlowError:
        raise PairingFailed(f"The server at {host}:{port} did not answer within {timeout:g} s.") from None
    return account


def _preauth_iq(token: str) -> Element:
    iq = make("iq", type_="set", id_="preauth-1")
    sub(iq, f"{{{ns.PARS}}}preauth", token=token)
    return iq


def _register_iq(name: str, password: str) -> Element:
    iq = make("iq", type_="set", id_="register-1")
    query = sub(iq, f"{{{ns.REGISTER}}}query")
    sub(query, f"{{{ns.REGISTER}}}username", name)
    sub(query, f"{{{ns.REGISTER}}}password", password)
    return iq


async def _request(link: Link, iq: Element, step: str) -> None:
    """An IQ before login; a refusal becomes PairingFailed with the server's reason."""
    await link.send(to_stream(iq))
    while (answer := await link.next_element()).get("id") != iq.get("id"):
        pass  # nothing else is expected before login
    if answer.get("type") != "result":
        raise PairingFailed(_refusal(step, *error_of(answer)))


def _refusal(step: str, condition: str, text: str) -> str:
    """The server's refusal (features/invites.py, register.py) as a sentence."""
    reason = text or condition.replace("-", " ")
    if condition == "forbidden" or (condition == "item-not-found" and step == "invite"):
        return f"The invite cannot be used: {reason}. Ask whoever invited you for a new one."
    if condition == "conflict":
        return f"The username cannot be had: {reason}. Choose another one."
    if condition == "service-unavailable":
        return f"The server does not let this invite register: {reason}."
    return f"The server refused the {step}: {reason}."


async def _befriend(account: Account, inviter: str, token: str, cafile: str | None, timeout: float) -> None:
    """Log in; unless the inviter is a contact both ways already, ask with the token (XEP-0379)
    and wait for the server's approval."""
    try:
        with trio.fail_after(timeout):
            stream = await login(account, cafile=cafile, timeout=timeout)
            try:
                if not await _mutual(stream, inviter):
                    request = make("presence", to=inviter, type_="subscribe")
                    sub(request, f"{{{ns.PARS}}}preauth", token=token)
                    await stream.send(request)
                    await _approved(stream, inviter)
            finally:
                await stream.aclose()
    except trio.TooSlowError:
        raise PairingFailed(f"{inviter} did not become a contact: the invite was not accepted (expired, "
                            "revoked or used); your request now waits for their approval.") from None
    except (LinkLost, StanzaRefused) as exc:
        raise PairingFailed(f"Logging in to add {inviter} failed: {exc}.") from exc


async def _mutual(stream: ClientStream, contact: str) -> bool:
    query = make("iq", type_="get")
    sub(query, f"{{{ns.ROSTER}}}query")
    result = (await stream.iq(query)).find(f"{{{ns.ROSTER}}}query")
    items = roster_items(result) if result is not None else []
    return any(item.jid == contact and item.subscription == "both" for item in items)


async def _approved(stream: ClientStream, contact: str) -> None:
    while True:
        stanza = await stream.receive()
        kind = etree.QName(stanza).localname
        if kind == "iq" and stanza.get("type") == "set":  # a roster push: acknowledge it
            await stream.send(iq_result(stanza))
        elif kind == "presence" and stanza.get("type") == "subscribed" and \
                stanza.get("from", "").split("/")[0] == contact:
            return
