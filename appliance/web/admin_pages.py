"""The admin page's sections: status, users and invites (groups and notifications: web/admin_notify.py).

Each POST validates its form (Invalid: a 400 page saying what is wrong), does one thing, leaves a
notice in the session and redirects to a GET page. The frame, sign-in and guard are web/admin.py.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from string import Template
from urllib.parse import quote

import trio
from scramp import ScramException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import appliance
from appliance.config import Config
from appliance.core.server import Server
from appliance.features.admins import is_admin
from appliance.features.register import remove_account
from appliance.pairing.fingerprint import fingerprint_sha256
from appliance.pairing.invites import ACCOUNT, KINDS, Invite, invite_uri, new_invite
from appliance.pairing.links import landing_url
from appliance.proto.jid import JID
from appliance.store import invites as stored_invites
from appliance.store import users
from appliance.web.admin import (AdminSite, Form, Invalid, admin_page, button, csrf_field, link, number_field, redirect,
                                  table, username_field)
from appliance.web.admin_notify import NotifySections
from appliance.web.admin_session import AdminSession
from appliance.web.invite_page import expiry
from appliance.web.layout import Markup, join, render

_ADD_USER = Template("""<h2>Add a user</h2><form method="post" action="/admin/users/add">$csrf
<label for="username">Username</label><input type="text" id="username" name="username" required>
<label for="password">Password</label><input type="password" id="password" name="password" required>
<p><button>Add user</button></p></form>""")
_CONFIRM = Template("""<p>Remove the account $user and everything stored for it (contacts, offline messages)?
This cannot be undone.</p><p>$button <a href="/admin/users">Cancel</a></p>""")
_NEW_INVITE = Template("""<h2>Create an invite</h2><form method="post" action="/admin/invites/create">$csrf
<label for="kind">Kind</label><select id="kind" name="kind"><option value="account">account: register a new account</option>
<option value="contact">contact: register and become the contact's contact</option></select>
<label for="contact">Contact (username; required for a contact invite)</label><input type="text" id="contact" name="contact">
<label for="username">Preset username (optional)</label><input type="text" id="username" name="username">
<label for="uses">Uses (0: unlimited until it expires)</label><input type="number" id="uses" name="uses" value="1" min="0">
<label for="hours">Valid for hours</label><input type="number" id="hours" name="hours" value="$hours" min="0.1" step="any">
<label><input type="checkbox" name="admin" value="1"> The new account is an administrator</label>
<p><button>Create invite</button></p></form>""")
_INVITE = Template("""<p>$what</p><img class="qr" src="/invite/$token/qr.svg" alt="QR code of the invite" width="320"
height="320"><p>Invite URI:</p><p class="uri" id="invite-uri">$uri</p><p>Landing page: $landing</p>
<p>Token <span class="uri" id="invite-token">$token</span>, valid until $expires, used $uses.</p>""")


class Sections:
    def __init__(self, site: AdminSite) -> None:
        self.site, self.server, self.config = site, site.server, site.config
        self.fingerprint = fingerprint_sha256(self.config.cert_path)

    def routes(self) -> list[Route]:
        get, post = ["GET"], ["POST"]
        guard = self.site.signed_in
        return [Route("/admin/status", guard(self.status, "/admin/status"), methods=get),
                Route("/admin/users", guard(self.users, "/admin/users"), methods=get),
                Route("/admin/users/add", guard(self.add_user, "/admin/users"), methods=post),
                Route("/admin/users/remove", guard(self.confirm_remove, "/admin/users"), methods=get),
                Route("/admin/users/remove", guard(self.remove_user, "/admin/users"), methods=post),
                Route("/admin/users/reset", guard(self.reset_user, "/admin/users"), methods=post),
                Route("/admin/invites", guard(self.invites, "/admin/invites"), methods=get),
                Route("/admin/invites/create", guard(self.create_invite, "/admin/invites"), methods=post),
                Route("/admin/invites/revoke", guard(self.revoke_invite, "/admin/invites"), methods=post),
                Route("/admin/invites/{token}", guard(self.invite, "/admin/invites"), methods=get)]

    async def status(self, request: Request, session: AdminSession, form: Form) -> Response:
        rows = [["Version", appliance.__version__], ["Uptime", _duration(time.time() - self.server.started)],
                ["Sessions online", str(len(self.server.sessions))],
                ["Resident memory", f"{_resident_bytes() / 2**20:.1f} MiB"],
                ["Database size", f"{_database_bytes(self.server) / 2**20:.2f} MiB"],
                ["Accounts", str(self.server.db.read(stored_invites.count_users))]]
        return admin_page(session, f"Status of {self.server.domain}", table(["", ""], rows))

    async def users(self, request: Request, session: AdminSession, form: Form) -> Response:
        rows = []
        for name in self.server.db.read(users.list_users):
            online = bool(self.server.sessions.of(JID(name, self.server.domain)))
            actions = join([button(session, "/admin/users/reset", "Reset by invite", username=name), Markup(" "),
                            link(f"/admin/users/remove?username={quote(name)}", "Remove")])
            rows.append([name, "yes" if is_admin(self.server, name) else "", "online" if online else "", actions])
        body = join([table(["User", "Admin", "Online", ""], rows), render(_ADD_USER, csrf=csrf_field(session))])
        return admin_page(session, "Users", body)

    async def add_user(self, request: Request, session: AdminSession, form: Form) -> Response:
        username, password = username_field(form), form.get("password", "")
        if not password:
            raise Invalid("the password is missing")
        try:
            credentials = await trio.to_thread.run_sync(users.make_credentials, password,
                                                        self.config.scram_iterations)
            await self.server.db.write(users.insert_user, username, credentials)
        except ScramException as exc:
            raise Invalid(f"password not allowed: {exc}") from None
        except users.UserExists:
            raise Invalid(f"the username {username} is taken") from None
        session.notice = f"Added {username}@{self.server.domain}."
        return redirect("/admin/users")

    async def confirm_remove(self, request: Request, session: AdminSession, form: Form) -> Response:
        username = self._existing(dict(request.query_params))
        confirm = button(session, "/admin/users/remove", f"Remove {username}", username=username)
        return admin_page(session, f"Remove {username}?", render(_CONFIRM, user=username, button=confirm))

    async def remove_user(self, request: Request, session: AdminSession, form: Form) -> Response:
        username = self._existing(form)
        await remove_account(self.server, username)  # its sessions are closed too
        session.notice = f"Removed {username}@{self.server.domain}."
        return redirect("/admin/users")

    def _default_ttl(self) -> float:
        """Seconds an invite lasts unless the admin says otherwise: [invites] expiry_days."""
        return self.server.config.invites.expiry_days * 86400

    async def reset_user(self, request: Request, session: AdminSession, form: Form) -> Response:
        username = self._existing(form)
        invite = replace(new_invite(ACCOUNT, inviter=None, now=time.time(), username=username,
                                    ttl=self._default_ttl()), reset=True)
        await self.server.db.write(stored_invites.insert_invite, invite)
        session.notice = f"Give {username} this invite: redeeming it sets a new password."
        return redirect(f"/admin/invites/{invite.token}")

    def _existing(self, form: Form) -> str:
        username = username_field(form)
        assert username is not None
        if not self.server.db.read(users.user_exists, username):
            raise Invalid(f"there is no user {username}")
        return username

    async def invites(self, request: Request, session: AdminSession, form: Form) -> Response:
        rows = [[link(f"/admin/invites/{i.token}", i.token[:8] + "…"), _kind(i), i.username or "",
                 f"{i.uses}/{i.max_uses or '∞'}", expiry(i.expires),
                 button(session, "/admin/invites/revoke", "Revoke", token=i.token)]
                for i in self.server.db.read(stored_invites.list_invites, time.time())]
        body = table(["Token", "Kind", "Username", "Used", "Valid until", ""], rows)
        return admin_page(session, "Invites", join([body, render(_NEW_INVITE, csrf=csrf_field(session),
                                                                  hours=f"{self._default_ttl() / 3600:g}")]))

    async def create_invite(self, request: Request, session: AdminSession, form: Form) -> Response:
        kind = form.get("kind", "")
        if kind not in KINDS:
            raise Invalid(f"the kind must be one of {', '.join(KINDS)}")
        contact = username_field(form, "contact", required=False)
        if contact is not None and not self.server.db.read(users.user_exists, contact):
            raise Invalid(f"there is no user {contact} to be the contact")
        if kind != ACCOUNT and contact is None:
            raise Invalid("a contact invite needs the contact's username")
        username = username_field(form, required=False)
        if username is not None and self.server.db.read(users.user_exists, username):
            raise Invalid(f"the username {username} is taken")
        uses, hours = int(number_field(form, "uses", 0, 10000)), number_field(form, "hours", 0.01, 24 * 3650)
        invite = new_invite(kind, inviter=contact, now=time.time(), username=username, max_uses=uses,
                            ttl=hours * 3600, admin=form.get("admin") == "1")
        await self.server.db.write(stored_invites.insert_invite, invite)
        session.notice = "Invite created."
        return redirect(f"/admin/invites/{invite.token}")

    async def revoke_invite(self, request: Request, session: AdminSession, form: Form) -> Response:
        if not await self.server.db.write(stored_invites.revoke, form.get("token", "")):
            raise Invalid("there is no such invite")
        session.notice = "Invite revoked."
        return redirect("/admin/invites")

    async def invite(self, request: Request, session: AdminSession, form: Form) -> Response:
        found = self.server.db.read(stored_invites.get_invite, request.path_params["token"])
        if found is None:
            raise Invalid("there is no such invite")
        problem = found.problem(time.time())
        uri = invite_uri(found, self.config.domain, self.fingerprint)
        what = f"This invite can no longer be used: {problem}." if problem else _purpose(found, self.config.domain)
        body = render(_INVITE, what=what, token=found.token, uri=uri, expires=expiry(found.expires),
                      landing=landing_url(self.config, found.token) or "(the web server has no public address)",
                      uses=f"{found.uses} of {found.max_uses or 'unlimited'} times")
        return admin_page(session, "Invite", body)


def _kind(invite: Invite) -> str:
    return "password reset" if invite.reset else invite.kind + (" (admin)" if invite.admin else "")


def _purpose(invite: Invite, domain: str) -> str:
    if invite.reset:
        return f"Redeeming this invite sets a new password for {invite.username}@{domain}."
    if invite.username:
        return f"Redeeming this invite creates the account {invite.username}@{domain}."
    return f"Redeeming this invite creates an account on {domain}."


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    return f"{days} d {rest // 3600} h {rest % 3600 // 60} min"


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _database_bytes(server: Server) -> int:
    path = server.db.path
    return sum(os.path.getsize(p) for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def admin_routes(server: Server, config: Config) -> list[Route]:
    """Every /admin route; build_app mounts them."""
    site = AdminSite(server, config)
    return site.routes() + Sections(site).routes() + NotifySections(site).routes()
