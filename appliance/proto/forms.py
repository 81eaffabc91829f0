"""XEP-0004 data forms, the little the appliance needs: build a form or a result, read a submission.

Ad-hoc commands (XEP-0050) carry their input and their answers in these. Sans-I/O: elements in,
elements out.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from appliance.proto import ns
from appliance.proto.stanza import Element, sub

_X = f"{{{ns.DATA_FORMS}}}x"
_FIELD = f"{{{ns.DATA_FORMS}}}field"
_VALUE = f"{{{ns.DATA_FORMS}}}value"
_TRUE, _FALSE = frozenset({"1", "true"}), frozenset({"0", "false"})   # XEP-0004 §3.3, xs:boolean


class FormError(ValueError):
    """A submitted form that cannot be read; str() says what is wrong with it."""


@dataclass(frozen=True)
class Field:
    var: str
    type: str = "text-single"
    label: str | None = None
    values: tuple[str, ...] = ()
    required: bool = False
    desc: str | None = None


def build(type_: str, fields: list[Field], *, form_type: str | None = None,
          title: str | None = None, instructions: str | None = None) -> Element:
    """`<x xmlns='jabber:x:data' type=type_>` ('form' or 'result'); with a `form_type`, the hidden
    FORM_TYPE field comes first (XEP-0068)."""
    x = etree.Element(_X, nsmap={None: ns.DATA_FORMS}, type=type_)
    if title is not None:
        sub(x, f"{{{ns.DATA_FORMS}}}title", title)
    if instructions is not None:
        sub(x, f"{{{ns.DATA_FORMS}}}instructions", instructions)
    if form_type is not None:
        fields = [Field("FORM_TYPE", "hidden", values=(form_type,)), *fields]
    for field in fields:
        _add_field(x, field)
    return x


def _add_field(x: Element, field: Field) -> None:
    attrs = {"var": field.var, "type": field.type}
    if field.label is not None:
        attrs["label"] = field.label
    el = sub(x, _FIELD, **attrs)
    if field.desc is not None:
        sub(el, f"{{{ns.DATA_FORMS}}}desc", field.desc)
    if field.required:
        sub(el, f"{{{ns.DATA_FORMS}}}required")
    for value in field.values:
        sub(el, _VALUE, value)


def find(parent: Element) -> Element | None:
    """The data form among `parent`'s children, if there is one."""
    return parent.find(_X)


def submitted(x: Element) -> dict[str, list[str]]:
    """The values of a submitted form by field name. XEP-0050 §4.4.1 has a responder treat a
    form of type 'cancel' as 'submit', so both are read."""
    if x.get("type") not in ("submit", "cancel"):
        raise FormError(f"a form of type {x.get('type')!r} cannot be submitted; use type 'submit'")
    values: dict[str, list[str]] = {}
    for field in x.iterfind(_FIELD):
        var = field.get("var")
        if not var:
            raise FormError("a submitted field has no 'var'")
        values[var] = [value.text or "" for value in field.iterfind(_VALUE)]
    return values


def single(values: dict[str, list[str]], var: str) -> str | None:
    """The one value of a single-valued field; None when it is absent or empty."""
    found = values.get(var) or []
    if len(found) > 1:
        raise FormError(f"field {var!r} takes one value, not {len(found)}")
    if not found:
        return None
    return found[0].strip() or None


def boolean(values: dict[str, list[str]], var: str, default: bool = False) -> bool:
    value = single(values, var)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise FormError(f"field {var!r} must be a boolean (1, 0, true or false), not {value!r}")
