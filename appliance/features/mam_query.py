"""XEP-0313 queries: the filter form, XEP-0059 paging, results, <fin/>, archive metadata; and the
XEP-0441 preferences' protocol.

All of one query's reads run in one read transaction (a consistent snapshot) on indexed ranges
of `seq` (store/archive.py), bounded by the page size; `count` and the first result's `index` are
index-only counts. Results go to the querying resource only, waiting for room in its outbox.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from lxml import etree

from appliance.config import ARCHIVE_MODES
from appliance.core.router import Routed
from appliance.core.server import Server
from appliance.core.session import Session
from appliance.features.presence import parse_stored
from appliance.proto import ns
from appliance.proto.errors import StanzaError
from appliance.proto.jid import JID, InvalidJID
from appliance.proto.stanza import Element, iq_result, make, sub
from appliance.store import archive as store

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
XDATA_VALIDATE = "http://jabber.org/protocol/xdata-validate"
FIELDS = {"FORM_TYPE": "hidden", "with": "jid-single", "start": "text-single", "end": "text-single",
          "before-id": "text-single", "after-id": "text-single", "ids": "list-multi"}


@dataclass
class Query:
    where: store.Filter
    after_id: str | None = None        # form fields (#extended): bounds, not paging directions
    before_id: str | None = None
    ids: list[str] | None = None
    after: str | None = None           # RSM
    before: str | None = None          # '' (an empty <before/>): the last page
    max: int | None = None
    index: int | None = None
    flip: bool = False


@dataclass
class Page:
    rows: list[store.Row]
    complete: bool
    count: int
    first_index: int | None


class NotFound(Exception):
    """An id the client named is not in the archive: item-not-found (XEP-0313)."""


# ---- answering ------------------------------------------------------------------------------------

async def answer(server: Server, routed: Routed, session: Session, cutoff: int, max_page: int) -> list[str]:
    """Run the query in `routed`, send the results and the <fin/>; returns the ids sent."""
    query_el = routed.payload
    assert query_el is not None
    query = parse(query_el, cutoff)
    try:
        page = server.db.read(_run, session.username, query, max_page)
    except NotFound as exc:
        raise StanzaError("item-not-found", f"no message {exc} in the archive") from None
    queryid = query_el.get("queryid")
    rows = page.rows[::-1] if query.flip else page.rows
    sent = []
    for row in rows:
        if not await server.deliver_patiently(session, result(routed, session, row, queryid)):
            return sent  # the session is gone: nobody to answer
        sent.append(row.id)
    await server.reply(routed, iq_result(routed.el, fin(page)))
    return sent


def _run(conn: sqlite3.Connection, user: str, query: Query, max_page: int) -> Page:
    where = _bounded(conn, user, query)
    limit = max_page if query.max is None else min(query.max, max_page)
    if query.after is not None or (query.before is not None and query.before != ""):
        after = _seq(conn, user, query.after) if query.after is not None else None
        before = _seq(conn, user, query.before) if query.before else None
        backward = query.after is None  # RSM <before>: the page that ends there (XEP-0059)
        rows = store.page(conn, user, where, after=after, before=before, limit=limit + 1, backward=backward)
    elif query.before == "":
        rows = store.page(conn, user, where, limit=limit + 1, backward=True)
        backward = True
    else:
        rows = store.page(conn, user, where, limit=limit + 1, offset=query.index or 0)
        backward = False
    complete = len(rows) <= limit
    rows = (rows[1:] if backward else rows[:limit]) if not complete else rows
    total = store.count(conn, user, where)
    first_index = store.count(conn, user, where, below=rows[0].seq) if rows else None
    return Page(rows, complete, total, first_index)


def _bounded(conn: sqlite3.Connection, user: str, query: Query) -> store.Filter:
    """The form's id fields, resolved to ranges of seq."""
    where = query.where
    if query.after_id is not None:
        where = replace(where, low=max(where.low, _seq(conn, user, query.after_id) + 1))
    if query.before_id is not None:
        high = _seq(conn, user, query.before_id) - 1
        where = replace(where, high=high if where.high is None else min(where.high, high))
    if query.ids is not None:
        where = replace(where, seqs=tuple(_seq(conn, user, id_) for id_ in query.ids))
    return where


def _seq(conn: sqlite3.Connection, user: str, id_: str) -> int:
    seq = store.seq_of(conn, user, id_)
    if seq is None:
        raise NotFound(id_)
    return seq


def result(routed: Routed, session: Session, row: store.Row, queryid: str | None) -> Element:
    """XEP-0313 query results: the archived stanza in <forwarded/> with the time it was archived."""
    message = make("message", to=session.jid, from_=routed.el.get("to"), id_=row.id)
    res = sub(message, f"{{{ns.MAM}}}result", id=row.id)
    if queryid is not None:
        res.set("queryid", queryid)
    forwarded = sub(res, f"{{{ns.FORWARD}}}forwarded")
    sub(forwarded, f"{{{ns.DELAY}}}delay", stamp=stamp(row.seq))
    forwarded.append(parse_stored(row.stanza))
    return message


def fin(page: Page) -> Element:
    el = etree.Element(f"{{{ns.MAM}}}fin", complete="true" if page.complete else "false", nsmap={None: ns.MAM})
    rsm = sub(el, f"{{{ns.RSM}}}set")
    if page.rows:
        sub(rsm, f"{{{ns.RSM}}}first", page.rows[0].id, index=str(page.first_index))
        sub(rsm, f"{{{ns.RSM}}}last", page.rows[-1].id)
    sub(rsm, f"{{{ns.RSM}}}count", str(page.count))
    return el


async def metadata(server: Server, routed: Routed, session: Session, cutoff: int) -> None:
    """XEP-0313 archive metadata: the first and last message of the archive (an empty <metadata/> for an empty one)."""
    el = etree.Element(f"{{{ns.MAM}}}metadata", nsmap={None: ns.MAM})
    found = server.db.read(store.bounds, session.username, cutoff)
    if found is not None:
        for name, (id_, seq) in zip(("start", "end"), found):
            sub(el, f"{{{ns.MAM}}}{name}", id=id_, timestamp=stamp(seq))
    await server.reply(routed, iq_result(routed.el, el))


def form() -> Element:
    """XEP-0313 form discovery: the fields we understand (none is required)."""
    query = etree.Element(f"{{{ns.MAM}}}query", nsmap={None: ns.MAM})
    x = sub(query, f"{{{ns.DATA_FORMS}}}x", type="form")
    for var, type_ in FIELDS.items():
        field = sub(x, f"{{{ns.DATA_FORMS}}}field", var=var, type=type_)
        if var == "FORM_TYPE":
            sub(field, f"{{{ns.DATA_FORMS}}}value", ns.MAM)
        elif var == "ids":
            validate = sub(field, f"{{{XDATA_VALIDATE}}}validate", datatype="xs:string")
            sub(validate, f"{{{XDATA_VALIDATE}}}open")
    return query


# ---- preferences (XEP-0441) ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Prefs:
    default: str
    always: frozenset[str] = frozenset()
    never: frozenset[str] = frozenset()

    def rule(self, other: JID) -> str:
        """XEP-0441 JID matching: a bare entry covers every resource, a full one that resource; never wins."""
        if not self.never and not self.always:
            return self.default  # the usual case, once per archived message: no JID to spell out
        keys = (str(other), str(other.bare))
        if any(k in self.never for k in keys):
            return "never"
        if any(k in self.always for k in keys):
            return "always"
        return self.default


def parse_prefs(el: Element) -> Prefs:
    default = el.get("default")
    if default not in ARCHIVE_MODES:
        raise StanzaError("bad-request", f"default must be one of {', '.join(ARCHIVE_MODES)}")
    lists: dict[str, frozenset[str]] = {}
    for name in ("always", "never"):
        jids = el.findall(f"{{{ns.MAM}}}{name}/{{{ns.MAM}}}jid")
        try:
            lists[name] = frozenset(str(JID.parse((j.text or "").strip())) for j in jids)
        except InvalidJID as exc:
            raise StanzaError("jid-malformed", str(exc)) from None
    return Prefs(default, lists["always"], lists["never"])


def prefs_element(prefs: Prefs) -> Element:
    el = etree.Element(f"{{{ns.MAM}}}prefs", default=prefs.default, nsmap={None: ns.MAM})
    for name, jids in (("always", prefs.always), ("never", prefs.never)):
        listed = etree.SubElement(el, f"{{{ns.MAM}}}{name}")
        for jid in sorted(jids):
            etree.SubElement(listed, f"{{{ns.MAM}}}jid").text = jid
    return el


# ---- parsing ----------------------------------------------------------------------------------------

def parse(el: Element, cutoff: int) -> Query:
    fields = _form_fields(el.find(f"{{{ns.DATA_FORMS}}}x"))
    query = Query(store.Filter(low=cutoff))
    if "start" in fields:
        query.where = replace(query.where, low=max(cutoff, parse_time(_single(fields, "start"))))
    if "end" in fields:
        query.where = replace(query.where, high=parse_time(_single(fields, "end")))
    if "with" in fields:
        try:
            with_ = JID.parse(_single(fields, "with"))
        except InvalidJID as exc:
            raise StanzaError("jid-malformed", str(exc)) from None
        query.where = replace(query.where, with_jid=str(with_.bare), with_resource=with_.resource)
    query.after_id = _single(fields, "after-id") if "after-id" in fields else None
    query.before_id = _single(fields, "before-id") if "before-id" in fields else None
    query.ids = fields.get("ids")
    _parse_rsm(el.find(f"{{{ns.RSM}}}set"), query)
    query.flip = el.find(f"{{{ns.MAM}}}flip-page") is not None
    return query


def _form_fields(x: Element | None) -> dict[str, list[str]]:
    if x is None:
        return {}
    fields = {}
    for field in x.iterfind(f"{{{ns.DATA_FORMS}}}field"):
        var = field.get("var") or ""
        if var not in FIELDS:
            raise StanzaError("feature-not-implemented", f"unknown field {var!r}")
        fields[var] = [(v.text or "").strip() for v in field.iterfind(f"{{{ns.DATA_FORMS}}}value")]
    if fields.get("FORM_TYPE", [ns.MAM]) != [ns.MAM]:
        raise StanzaError("bad-request", f"FORM_TYPE must be {ns.MAM}")
    return fields


def _single(fields: dict[str, list[str]], var: str) -> str:
    values = fields[var]
    if len(values) != 1 or not values[0]:
        raise StanzaError("bad-request", f"field {var!r} needs one value")
    return values[0]


def _parse_rsm(rsm: Element | None, query: Query) -> None:
    if rsm is None:
        return
    for name in ("after", "before"):
        found = rsm.find(f"{{{ns.RSM}}}{name}")
        if found is not None:
            setattr(query, name, (found.text or "").strip())
    if query.after == "":
        raise StanzaError("bad-request", "an empty <after/>")
    for name in ("max", "index"):
        text = rsm.findtext(f"{{{ns.RSM}}}{name}")
        if text is not None:
            try:
                value = int(text)
            except ValueError:
                value = -1
            if value < 0:
                raise StanzaError("bad-request", f"<{name}/> must be a non-negative integer")
            setattr(query, name, value)


def parse_time(text: str) -> int:
    """XEP-0082 DateTime to microseconds since the epoch (a stamp without a zone is UTC)."""
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise StanzaError("bad-request", f"not a XEP-0082 DateTime: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - EPOCH) // timedelta(microseconds=1)


def stamp(seq: int) -> str:
    return (EPOCH + timedelta(microseconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
