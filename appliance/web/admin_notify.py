"""The admin page's groups and notifications sections (the frame and guard are web/admin.py).

Notifications are sent with features.notifications.send_notification, as the API sends them, with
the administrator's address as the sender. A notification's own page refreshes itself every 2 s
with `<meta http-equiv=refresh>` (no JavaScript), so its delivered count follows the phones.
"""

from __future__ import annotations

from collections.abc import Callable
from string import Template

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from appliance.features.notifications import (AUDIENCE_KINDS, PRIORITIES, Audience, DeliveryStatus,
                                               NotificationRejected, NotificationRequest, delivery_status,
                                               recent_notifications, send_notification)
from appliance.store import groups
from appliance.web.admin import AdminSite, Form, Invalid, admin_page, button, csrf_field, link, number_field, \
    redirect, table
from appliance.web.admin_session import AdminSession
from appliance.web.invite_page import expiry
from appliance.web.layout import Markup, join, render

_NEW_GROUP = Template("""<h2>Create a group</h2><form method="post" action="/admin/groups/create">$csrf
<label for="name">Name</label><input type="text" id="name" name="name" required>
<label for="members">Members (usernames, separated by spaces or commas)</label>
<input type="text" id="members" name="members"><p><button>Create group</button></p></form>""")
_MEMBERS = Template("""<form method="post" action="/admin/groups/members">$csrf
<input type="hidden" name="name" value="$name"><input type="text" name="members" value="$members"
 aria-label="members of $name"><button>Set members</button></form>""")
_OPTION = Template('<option value="$value"$selected>$value</option>')
_SEND = Template("""<h2>Send a notification</h2><form method="post" action="/admin/notifications/send">$csrf
<label for="title">Title</label><input type="text" id="title" name="title" required>
<label for="body">Text</label><textarea id="body" name="body" rows="3"></textarea>
<label for="link">Link (optional, http or https)</label><input type="text" id="link" name="link">
<label for="priority">Priority</label><select id="priority" name="priority">$priorities</select>
<label for="ttl">Keep for hours if undelivered (empty: the default)</label>
<input type="number" id="ttl" name="ttl" min="0.01" step="any">
<label for="audience">To</label><select id="audience" name="audience">$audiences</select>
<label for="names">Usernames (for "users") or the group name (for "group")</label>
<input type="text" id="names" name="names"><p><button>Send</button></p></form>""")
_REFRESH = Markup('<meta http-equiv="refresh" content="2">\n')


def _names(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.replace(",", " ").split() if name)


def _options(values: tuple[str, ...], selected: str) -> Markup:
    return join([render(_OPTION, value=v, selected=Markup(" selected") if v == selected else Markup(""))
                 for v in values])


def _audience(audience: Audience) -> str:
    return f"{audience.kind}: {', '.join(audience.names)}" if audience.names else audience.kind


def _row(status: DeliveryStatus) -> list[str | Markup]:
    return [link(f"/admin/notifications/{status.id}", status.title), status.priority, _audience(status.audience),
            str(status.recipients), str(status.delivered), "expired" if status.expired else str(status.pending)]


class NotifySections:
    def __init__(self, site: AdminSite) -> None:
        self.site, self.server = site, site.server

    def routes(self) -> list[Route]:
        guard, get, post = self.site.signed_in, ["GET"], ["POST"]
        return [Route("/admin/groups", guard(self.groups, "/admin/groups"), methods=get),
                Route("/admin/groups/create", guard(self.create_group, "/admin/groups"), methods=post),
                Route("/admin/groups/members", guard(self.set_members, "/admin/groups"), methods=post),
                Route("/admin/groups/delete", guard(self.delete_group, "/admin/groups"), methods=post),
                Route("/admin/notifications", guard(self.notifications, "/admin/notifications"), methods=get),
                Route("/admin/notifications/send", guard(self.send, "/admin/notifications"), methods=post),
                Route("/admin/notifications/{id:int}", guard(self.notification, "/admin/notifications"),
                      methods=get)]

    async def groups(self, request: Request, session: AdminSession, form: Form) -> Response:
        csrf = csrf_field(session)
        rows = [[name, render(_MEMBERS, csrf=csrf, name=name, members=" ".join(members)),
                 button(session, "/admin/groups/delete", "Delete", name=name)]
                for name, members in self.server.db.read(groups.list_groups)]
        return admin_page(session, "Groups", join([table(["Group", "Members", ""], rows), render(_NEW_GROUP, csrf=csrf)]))

    async def create_group(self, request: Request, session: AdminSession, form: Form) -> Response:
        name = form.get("name", "").strip()
        await self._change(groups.create_group, name, _names(form.get("members", "")))
        session.notice = f"Group {name} created."
        return redirect("/admin/groups")

    async def set_members(self, request: Request, session: AdminSession, form: Form) -> Response:
        name = form.get("name", "")
        await self._change(groups.set_members, name, _names(form.get("members", "")))
        session.notice = f"Members of {name} changed."
        return redirect("/admin/groups")

    async def delete_group(self, request: Request, session: AdminSession, form: Form) -> Response:
        name = form.get("name", "")
        if not await self.server.db.write(groups.delete_group, name):
            raise Invalid(f"there is no group {name}")
        session.notice = f"Group {name} deleted."
        return redirect("/admin/groups")

    async def _change(self, change: Callable[..., object], name: str, members: tuple[str, ...]) -> None:
        try:
            await self.server.db.write(change, name, members)
        except groups.GroupError as exc:
            raise Invalid(str(exc)) from None

    async def notifications(self, request: Request, session: AdminSession, form: Form) -> Response:
        rows = [_row(status) for status in recent_notifications(self.server)]
        sent = table(["Title", "Priority", "To", "Recipients", "Delivered", "Pending"], rows)
        body = render(_SEND, csrf=csrf_field(session), priorities=_options(PRIORITIES, "normal"),
                      audiences=_options(AUDIENCE_KINDS, "everyone"))
        return admin_page(session, "Notifications", join([body, Markup("<h2>Recent</h2>"), sent]))

    async def send(self, request: Request, session: AdminSession, form: Form) -> Response:
        kind = form.get("audience", "")
        ttl = number_field(form, "ttl", 0.01, 24 * 3650) * 3600 if form.get("ttl", "").strip() else None
        names = _names(form.get("names", ""))
        if kind in ("everyone", "online") and names:
            raise Invalid(f'names are only for "users" or "group", not "{kind}"')
        request_ = NotificationRequest(
            title=form.get("title", "").strip(), body=form.get("body", ""), link=form.get("link", "").strip() or None,
            priority=form.get("priority", ""), ttl_seconds=ttl, audience=Audience(kind, names),
            sender=f"{session.username}@{self.server.domain}")
        try:
            status = await send_notification(self.server, request_)
        except NotificationRejected as exc:
            raise Invalid(str(exc)) from None
        session.notice = f"Sent to {status.recipients} recipients."
        return redirect(f"/admin/notifications/{status.id}")

    async def notification(self, request: Request, session: AdminSession, form: Form) -> Response:
        status = delivery_status(self.server, request.path_params["id"])
        if status is None:
            raise Invalid("there is no such notification")
        rows = [["Title", status.title], ["Priority", status.priority], ["To", _audience(status.audience)],
                ["Sent", expiry(status.created)], ["Kept until", expiry(status.expires)],
                ["Recipients", str(status.recipients)], ["Delivered", str(status.delivered)],
                ["Pending", str(status.pending)], ["Expired", "yes" if status.expired else "no"]]
        note = Markup('<p class="note">This page refreshes itself every 2 seconds.</p>')
        return admin_page(session, "Notification", join([table(["", ""], rows), note]), head=_REFRESH)
