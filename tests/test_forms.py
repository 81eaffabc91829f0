"""XEP-0004 data forms (appliance/proto/forms.py): what is built, and what a submission reads as."""

from __future__ import annotations

import pytest
from lxml import etree

from appliance.proto import forms, ns

X = f"{{{ns.DATA_FORMS}}}"


def submission(fields: str, type_: str = "submit") -> etree._Element:
    return etree.fromstring(f"<x xmlns='{ns.DATA_FORMS}' type='{type_}'>{fields}</x>")


def test_a_result_form_starts_with_its_form_type_and_keeps_field_order() -> None:
    x = forms.build("result", [forms.Field("uri", label="Invite URI", values=("xmpp:a?b",), desc="share it"),
                               forms.Field("expire", values=("2026-01-01T00:00:00Z",))],
                    form_type="urn:example", title="Done", instructions="Read me")
    assert x.tag == f"{X}x" and x.get("type") == "result"
    assert x.findtext(f"{X}title") == "Done" and x.findtext(f"{X}instructions") == "Read me"
    fields = x.findall(f"{X}field")
    assert [(f.get("var"), f.get("type")) for f in fields] == [
        ("FORM_TYPE", "hidden"), ("uri", "text-single"), ("expire", "text-single")]
    assert fields[0].findtext(f"{X}value") == "urn:example"
    assert fields[1].get("label") == "Invite URI" and fields[1].findtext(f"{X}desc") == "share it"
    assert fields[1].findtext(f"{X}value") == "xmpp:a?b"


def test_a_required_field_says_so_and_a_form_without_type_has_no_hidden_field() -> None:
    x = forms.build("form", [forms.Field("username", required=True), forms.Field("admin", "boolean")])
    fields = x.findall(f"{X}field")
    assert [f.get("var") for f in fields] == ["username", "admin"]
    assert fields[0].find(f"{X}required") is not None and fields[1].find(f"{X}required") is None
    assert fields[1].find(f"{X}value") is None


def test_a_submission_reads_as_values_by_field() -> None:
    values = forms.submitted(submission(
        "<field var='username'><value> juliet </value></field>"
        "<field var='admin' type='boolean'><value>true</value></field>"
        "<field var='groups'><value>a</value><value>b</value></field>"
        "<field var='empty'/>"))
    assert values == {"username": [" juliet "], "admin": ["true"], "groups": ["a", "b"], "empty": []}
    assert forms.single(values, "username") == "juliet"
    assert forms.single(values, "empty") is None and forms.single(values, "missing") is None
    assert forms.boolean(values, "admin") is True
    assert forms.boolean(values, "missing") is False and forms.boolean(values, "missing", default=True) is True


@pytest.mark.parametrize("text, expected", [("1", True), ("true", True), ("TRUE", True), ("0", False),
                                            ("false", False)])
def test_booleans_take_the_xml_schema_spellings(text: str, expected: bool) -> None:
    assert forms.boolean({"flag": [text]}, "flag") is expected


def test_a_cancel_form_is_read_like_a_submission() -> None:
    """XEP-0050 §4.4.1: a responder treats <x type='cancel'/> as type='submit'."""
    assert forms.submitted(submission("<field var='a'><value>1</value></field>", "cancel")) == {"a": ["1"]}


@pytest.mark.parametrize("x, message", [
    ("<x xmlns='jabber:x:data' type='form'/>", "cannot be submitted"),
    ("<x xmlns='jabber:x:data' type='submit'><field><value>1</value></field></x>", "no 'var'"),
])
def test_unreadable_submissions_say_why(x: str, message: str) -> None:
    with pytest.raises(forms.FormError, match=message):
        forms.submitted(etree.fromstring(x))


def test_bad_values_say_which_field() -> None:
    with pytest.raises(forms.FormError, match="'username' takes one value, not 2"):
        forms.single({"username": ["a", "b"]}, "username")
    with pytest.raises(forms.FormError, match="'admin' must be a boolean"):
        forms.boolean({"admin": ["yes"]}, "admin")


def test_find_picks_the_data_form_among_other_children() -> None:
    command = etree.fromstring(f"<command xmlns='{ns.COMMANDS}'><note>hi</note>"
                               f"<x xmlns='{ns.DATA_FORMS}' type='submit'/></command>")
    assert forms.find(command) is command[1]
    assert forms.find(etree.fromstring(f"<command xmlns='{ns.COMMANDS}'/>")) is None
