"""JID parsing and normalisation (RFC 7622): strings in, normalised parts or InvalidJID out."""

import pytest

from appliance.proto.jid import JID, InvalidJID

LABEL = "a" * 63


@pytest.mark.parametrize("text, local, domain, resource", [
    ("juliet@example.com", "juliet", "example.com", None),
    ("Juliet@Example.COM/Balcony", "juliet", "example.com", "Balcony"),  # resource keeps its case
    ("example.com", None, "example.com", None),
    ("example.com/res", None, "example.com", "res"),
    ("example.com.", None, "example.com", None),  # the trailing dot of a FQDN is dropped
    ("ÖSTERREICH@example.com", "österreich", "example.com", None),
    ("ＪＵＬＩＥＴ@example.com", "juliet", "example.com", None),  # fullwidth is width-mapped
    ("user@BÜCHER.example", "user", "bücher.example", None),  # IDN: UTS 46 maps and lowercases
    ("user@bücher.example", "user", "bücher.example", None),
    ("a/b@c", None, "a", "b@c"),  # the first '/' ends the domain; '@' is fine in a resource
    ("a@b/c/d", "a", "b", "c/d"),
    ("a@b/ x y", "a", "b", " x y"),
    ("[::1]", None, "[::1]", None),
    ("u@192.168.0.1", "u", "192.168.0.1", None),
])
def test_valid_jids_are_normalised(text, local, domain, resource):
    jid = JID.parse(text)
    assert (jid.local, jid.domain, jid.resource) == (local, domain, resource)
    assert JID.parse(str(jid)) == jid  # the normal form parses back to itself


def test_equal_after_normalisation():
    assert JID.parse("ROMEO@Example.Com/x") == JID.parse("romeo@example.com/x")
    assert JID.parse("romeo@example.com/X") != JID.parse("romeo@example.com/x")


def test_bare_and_with_resource():
    full = JID.parse("romeo@example.com/orchard")
    assert full.bare == JID.parse("romeo@example.com") and full.bare.is_bare
    assert not full.is_bare
    assert full.bare.with_resource("garden") == JID.parse("romeo@example.com/garden")
    assert str(JID.parse("example.com")) == "example.com"


@pytest.mark.parametrize("text", [
    "",
    "@x",  # empty localpart
    "a@",  # empty domainpart
    "a@b/",  # empty resourcepart
    "/r",  # empty domainpart
    "a@/r",
    ".",
    "a@b@c",  # '@' in the localpart
    'a"b@c', "a&b@c", "a'b@c", "a:b@c", "a<b@c", "a>b@c",  # RFC 7622 §3.3.1
    "a b@c",  # PRECIS forbids spaces in a username
    "a\u0000b@c",  # control characters
    "a＠b@example.com",  # fullwidth '@' becomes '@' only after width mapping
    "a／b@example.com",
    "user@ex ample.com",
    "user@exa\tmple.com",
    "user@ex..ample.com",
    "user@exa<mple.com",
    "user@exa\u0000mple.com",
    "a@b/\u0000",  # resourcepart: control character
    "a@b/x\u200by",  # resourcepart: a zero-width space is disallowed
])
def test_malformed_jids_are_refused(text):
    with pytest.raises(InvalidJID):
        JID.parse(text)


def test_each_part_is_limited_to_1023_bytes():
    domain = ".".join([LABEL] * 15) + ".example"  # 968 bytes: valid by itself
    JID.parse(f"{'a' * 1023}@{domain}/{'r' * 1023}")
    for text in (f"{'a' * 1024}@{domain}", f"a@{domain}/{'r' * 1024}", "a@" + "b" * 1024):
        with pytest.raises(InvalidJID):
            JID.parse(text)


def test_limits_count_bytes_not_characters():
    JID.parse("é" * 511 + "@example.com")  # 1022 bytes
    with pytest.raises(InvalidJID):
        JID.parse("é" * 512 + "@example.com")  # 1024 bytes, 512 characters


def test_whole_jid_over_long_is_refused():
    with pytest.raises(InvalidJID, match="too long"):
        JID.parse("a" * 1023 + "@" + "b" * 1023 + "/" + "r" * 1024)
