"""XEP-0401 §3-4: clients create invites through ad-hoc commands at the server's JID.

- `urn:xmpp:invite#invite`: a contact invite from the requester (`xmpp:USER@DOMAIN?roster;...`),
  for every local user while `invites.users_may_invite` is on, and always for administrators;
- `urn:xmpp:invite#create-account`: an account invite (`xmpp:DOMAIN?register;...`) for
  administrators, and for every user when `invites.users_may_create_accounts` is on. Its form
  asks for an optional preset username, whether the new account and the requester become contacts
  (`roster-subscription`, XEP-0401 §4) and, for administrators only, whether the new account is an
  administrator too.

Both answer with the result form of FORM_TYPE `urn:xmpp:invite#invitation`: `uri` (carrying the
certificate pin), `landing-url` when the web server is on, and `expire` (XEP-0082). The pin is
read once, at start: the certificate does not change while the server runs.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from appliance.core.server import Server
from appliance.features import adhoc
from appliance.features.admins import is_local_admin
from appliance.pairing.fingerprint import fingerprint_sha256
from appliance.pairing.invites import ACCOUNT, CONTACT, Invite, invite_uri, new_invite
from appliance.pairing.links import landing_url
from appliance.proto import forms
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID, InvalidJID, normalise_local
from appliance.proto.stanza import Element
from appliance.store.invites import insert_invite
from appliance.store.users import user_exists

INVITE_NODE = "urn:xmpp:invite#invite"
CREATE_ACCOUNT_NODE = "urn:xmpp:invite#create-account"
INVITATION_FORM = "urn:xmpp:invite#invitation"


def setup(server: Server) -> None:
    cert = server.config.cert_path
    # serve makes the certificate before it builds the server; `appliance routes` builds one without.
    pin = fingerprint_sha256(cert) if cert.exists() else None
    settings = server.config.invites

    def local(jid: JID) -> bool:
        return jid.domain == server.domain and jid.local is not None

    def may_invite(requester: JID) -> bool:
        return local(requester) and (settings.users_may_invite or is_local_admin(server, requester))

    def may_create_accounts(requester: JID) -> bool:
        return local(requester) and (settings.users_may_create_accounts or is_local_admin(server, requester))

    async def invite(requester: JID, values: adhoc.Values) -> list[Element]:
        made = new_invite(CONTACT, inviter=requester.local, now=time.time(), ttl=settings.expiry_days * 86400)
        return [await _issue(server, made, pin)]

    async def create_account(requester: JID, values: adhoc.Values) -> list[Element]:
        admin = forms.boolean(values, "admin")
        if admin and not is_local_admin(server, requester):
            raise StanzaError("forbidden", "only administrators may invite administrators")
        inviter = requester.local if forms.boolean(values, "roster-subscription") else None
        made = new_invite(ACCOUNT, inviter=inviter, username=_preset_username(server, values), admin=admin,
                          now=time.time(), ttl=settings.expiry_days * 86400)
        return [await _issue(server, made, pin)]

    def account_form(requester: JID) -> Element:
        return _account_form(is_local_admin(server, requester))

    adhoc.register(server, adhoc.Command(INVITE_NODE, "Invite someone to chat with you", may_invite, invite))
    adhoc.register(server, adhoc.Command(CREATE_ACCOUNT_NODE, "Create an account invite", may_create_accounts,
                                         create_account, form=account_form))


def _account_form(for_admin: bool) -> Element:
    fields = [
        forms.Field("username", label="Username", desc="The new account's name; leave empty to let the invitee choose"),
        forms.Field("roster-subscription", "boolean", label="Add the new account to my contacts", values=("0",)),
    ]
    if for_admin:
        fields.append(forms.Field("admin", "boolean", label="Make the new account an administrator", values=("0",)))
    return forms.build("form", fields, title="Create an account invite",
                       instructions="Anyone with the invite can create one account on this server.")


def _preset_username(server: Server, values: adhoc.Values) -> str | None:
    """The username the invite reserves, normalised as a login would be; None: the invitee picks."""
    wanted = forms.single(values, "username")
    if wanted is None:
        return None
    try:
        username = normalise_local(wanted)
    except InvalidJID as exc:
        raise forms.FormError(f"username {wanted!r} cannot be an account name: {exc}") from None
    if server.db.read(user_exists, username):
        raise StanzaError("conflict", f"the account {username} exists already")
    return username


async def _issue(server: Server, invite: Invite, pin: str | None) -> Element:
    """Store the invite and describe it in the XEP-0401 result form."""
    await server.db.write(insert_invite, invite)
    fields = [forms.Field("uri", label="Invite URI", values=(invite_uri(invite, server.domain, pin),),
                          desc="Open it in an XMPP app, or show it as a QR code")]
    if (page := landing_url(server.config, invite.token)) is not None:
        fields.append(forms.Field("landing-url", label="Invite web page", values=(page,),
                                  desc="Share this link"))
    if invite.expires is not None:
        fields.append(forms.Field("expire", label="Valid until", values=(_datetime(invite.expires),)))
    return forms.build("result", fields, form_type=INVITATION_FORM, title="Your invite has been created")


def _datetime(when: float) -> str:
    """XEP-0082 DateTime in UTC, to the second."""
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
