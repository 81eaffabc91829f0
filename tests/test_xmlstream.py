"""The hardened stream parser: bytes in, events or StreamError out."""

import random

import pytest
from lxml import etree

from appliance.proto import ns
from appliance.proto.errors import StreamError
from appliance.proto.xmlstream import StanzaReceived, StreamEnded, StreamOpened, StreamParser

HEADER = (b"<?xml version='1.0' encoding='UTF-8'?><stream:stream to='example.com' version='1.0' "
          b"xml:lang='en' id='s1' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
BARE_HEADER = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
MESSAGE = (b"<message to='juliet@example.com' type='chat' id='m1'><body>caf\xc3\xa9 &amp; &lt;tea&gt; "
           b"&#233;&#x263A; &apos;&quot; <![CDATA[<raw> & ]] ]]></body>"
           b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
STANZAS = (MESSAGE + b"\n  <presence/>\r\n\t"
           b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>"
           b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
STREAM = HEADER + b"\n" + STANZAS + b" </stream:stream>"
KiB = 1024


def feed_all(chunks, parser=None):
    parser = parser or StreamParser()
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events


def describe(events):
    """Events as comparable values: stanzas by their serialised form."""
    return [etree.tostring(e.element) if isinstance(e, StanzaReceived) else e for e in events]


def refused(data, condition, chunks=None, parser=None):
    parser = parser or StreamParser()
    pieces = chunks if chunks is not None else [data]
    with pytest.raises(StreamError) as info:
        feed_all(pieces, parser)
    assert info.value.condition == condition, info.value
    return info.value


def splits(data):
    """`data` cut in two at every position."""
    return ([data[:i], data[i:]] for i in range(1, len(data)))


# ---- normal streams -------------------------------------------------------------------------------

def test_stream_in_one_chunk():
    events = StreamParser().feed(STREAM)
    assert events[0] == StreamOpened({"to": "example.com", "version": "1.0", "id": "s1", "lang": "en"})
    tags = [e.element.tag for e in events[1:-1]]
    assert tags == [f"{{{ns.CLIENT}}}message", f"{{{ns.CLIENT}}}presence", f"{{{ns.CLIENT}}}iq",
                    f"{{{ns.TLS}}}starttls"]
    assert events[-1] == StreamEnded()
    body = events[1].element.find(f"{{{ns.CLIENT}}}body")
    assert body.text == "café & <tea> é☺ '\" <raw> & ]] "


def test_one_byte_at_a_time_gives_the_same_events():
    whole = describe(StreamParser().feed(STREAM))
    assert describe(feed_all(STREAM[i:i + 1] for i in range(len(STREAM)))) == whole


def test_every_split_gives_the_same_events():
    whole = describe(StreamParser().feed(STREAM))
    for chunks in splits(STREAM):
        assert describe(feed_all(chunks)) == whole


def test_stanza_is_standalone():
    stanza = StreamParser().feed(BARE_HEADER + MESSAGE)[1].element
    assert stanza.getparent() is None and stanza.tail is None
    xml = etree.tostring(stanza)
    assert xml.startswith(b'<message xmlns="jabber:client" to=')
    assert b"xmlns:stream" not in xml and b"ns0" not in xml
    assert etree.fromstring(xml).tag == f"{{{ns.CLIENT}}}message"


def test_header_without_declaration_and_optional_attributes():
    assert StreamParser().feed(BARE_HEADER) == [StreamOpened({})]


def test_byte_order_mark_before_declaration():
    assert StreamParser().feed(b"\xef\xbb\xbf" + HEADER)[0].attrs["to"] == "example.com"


def test_server_namespace_parser():
    header = BARE_HEADER.replace(b"jabber:client", b"jabber:server")
    events = StreamParser(default_ns=ns.SERVER).feed(header + b"<message/>")
    assert events[1].element.tag == f"{{{ns.SERVER}}}message"


def test_whitespace_keepalives_are_ignored():
    parser = StreamParser()
    assert parser.feed(BARE_HEADER + b"\n\n") == [StreamOpened({})]
    for _ in range(2000):  # far more than max_stanza_bytes of keepalives, over a long stream
        assert parser.feed(b" " * 200 + b"\n") == []
    assert len(parser.feed(b"<presence/>")) == 1
    assert parser.feed(b" \t\r\n") == []


def test_many_stanzas_do_not_add_up_to_the_size_limit():
    parser = StreamParser(max_stanza_bytes=4 * KiB)
    parser.feed(BARE_HEADER)
    blob = MESSAGE * 2000  # 400 KB; chunks never align with stanza boundaries
    events = feed_all((blob[i:i + 1000] for i in range(0, len(blob), 1000)), parser)
    assert len(events) == 2000


def test_memory_stays_flat():
    parser = StreamParser()
    parser.feed(BARE_HEADER + b" ")
    for _ in range(1000):
        parser.feed(b"<presence/> \n")
    root = parser._root  # white-box: nothing may accumulate under the stream root
    assert len(root) == 0 and not root.text


def test_stream_end_and_bytes_after_it_are_ignored():
    parser = StreamParser()
    events = parser.feed(BARE_HEADER + b"<presence/></stream:stream><!-- junk &x; \xff")
    assert events[-1] == StreamEnded() and len(events) == 3
    assert parser.feed(b"<more/>") == []


def test_stream_end_alone():
    assert StreamParser().feed(BARE_HEADER + b"</stream:stream>") == [StreamOpened({}), StreamEnded()]


def test_bytes_fed_counts_everything():
    parser = StreamParser()
    parser.feed(STREAM)
    parser.feed(b"ignored")
    assert parser.bytes_fed == len(STREAM) + 7


def test_depth_at_the_limit_is_fine():
    nested = b"<a>" * 32 + b"</a>" * 32
    parser = StreamParser(max_depth=32)
    assert len(parser.feed(BARE_HEADER + nested)) == 2
    refused(BARE_HEADER + b"<a>" * 33, "policy-violation", parser=StreamParser(max_depth=32))


# ---- hostile input ----------------------------------------------------------------------------------

BILLION_LAUGHS = (b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
                  + b"".join(b"<!ENTITY lol%d '%s'>" % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
                  + b"]>" + BARE_HEADER + b"<message><body>&lol9;</body></message>")
RESTRICTED = {
    "billion laughs": BILLION_LAUGHS,
    "doctype mid-stream": BARE_HEADER + b"<!DOCTYPE x [<!ENTITY a 'b'>]>",
    "external entity": (b"<!DOCTYPE s [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>" + BARE_HEADER
                        + b"<message><body>&x;</body></message>"),
    "entity in text": BARE_HEADER + b"<message><body>a &foo; b</body></message>",
    "entity in attribute": BARE_HEADER + b"<message to='&foo;'/>",
    "entity looking predefined": BARE_HEADER + b"<message><body>&ampx;</body></message>",
    "comment": BARE_HEADER + b"<message><!-- hi --></message>",
    "comment between stanzas": BARE_HEADER + b"<presence/><!---->",
    "comment before header": b"<!-- hi -->" + BARE_HEADER,
    "processing instruction": BARE_HEADER + b"<message><?php evil() ?></message>",
    "xml-stylesheet": BARE_HEADER + b"<?xml-stylesheet href='x'?>",
    "second declaration": BARE_HEADER + b"<?xml version='1.0'?>",
    "declaration after whitespace": b" " + HEADER,
}


@pytest.mark.parametrize("name", RESTRICTED)
def test_restricted_xml(name):
    refused(RESTRICTED[name], "restricted-xml")


@pytest.mark.parametrize("name", RESTRICTED)
def test_restricted_xml_split_at_every_position(name):
    data = RESTRICTED[name]
    for chunks in splits(data):
        refused(None, "restricted-xml", chunks=chunks)
    refused(None, "restricted-xml", chunks=[data[i:i + 1] for i in range(len(data))])


def test_cdata_cannot_hide_restricted_markup_after_it():
    data = BARE_HEADER + b"<message><body><![CDATA[ ]]]]><!-- x --></body></message>"
    for chunks in splits(data):
        refused(None, "restricted-xml", chunks=chunks)


def test_markup_inside_cdata_is_text():
    data = BARE_HEADER + b"<message><body><![CDATA[<!-- &x; <?pi?> <!DOCTYPE>]]></body></message>"
    for chunks in splits(data):
        body = feed_all(chunks)[1].element[0]
        assert body.text == "<!-- &x; <?pi?> <!DOCTYPE>"


def test_huge_stanza_is_refused_early():
    parser = StreamParser()
    parser.feed(BARE_HEADER)
    stanza = b"<message><body>" + b"x" * (10 * KiB * KiB) + b"</body></message>"
    chunk = 64 * KiB
    with pytest.raises(StreamError) as info:
        for start in range(0, len(stanza), chunk):
            parser.feed(stanza[start:start + chunk])
    assert info.value.condition == "policy-violation"
    assert parser.bytes_fed < 262144 + 2 * chunk  # refused right after the limit, not at 10 MB


def test_huge_stanza_in_one_feed_is_refused():
    parser = StreamParser()
    refused(BARE_HEADER + b"<message a='" + b"x" * (10 * KiB * KiB), "policy-violation", parser=parser)


def test_huge_header_is_refused():
    refused(b"<stream:stream a='" + b"x" * (300 * KiB), "policy-violation")


def test_unfinished_start_tag_cannot_grow_forever():
    # '>' inside an attribute value then endless whitespace: libxml2 keeps buffering the tag
    parser = StreamParser()
    parser.feed(BARE_HEADER + b"<presence/><message a='>")
    with pytest.raises(StreamError) as info:
        for _ in range(1000):
            parser.feed(b" " * KiB)
    assert info.value.condition == "policy-violation"


def test_unfinished_stream_end_cannot_grow_forever():
    parser = StreamParser()
    parser.feed(BARE_HEADER + b"<presence/></stream:stream")
    with pytest.raises(StreamError) as info:
        for _ in range(1000):
            parser.feed(b" " * KiB)
    assert info.value.condition == "policy-violation"


def test_deep_nesting_in_one_chunk():
    refused(BARE_HEADER + b"<a>" * 10000, "policy-violation")


@pytest.mark.parametrize("size", [1, 7, 100, 4096])
def test_deep_nesting_in_chunks(size):
    data = BARE_HEADER + b"<a>" * 10000
    refused(None, "policy-violation", chunks=[data[i:i + size] for i in range(0, len(data), size)])


def test_libxml2_depth_limit_is_policy_violation_too():
    # with a limit above libxml2's own (256), its error must still map to policy-violation
    refused(BARE_HEADER + b"<a>" * 10000, "policy-violation", parser=StreamParser(max_depth=1000))


@pytest.mark.parametrize("bad", [
    b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80",
])
def test_invalid_utf8(bad):
    data = BARE_HEADER + b"<message><body>a" + bad + b"b</body></message>"
    refused(data, "unsupported-encoding")
    for chunks in splits(data):
        refused(None, "unsupported-encoding", chunks=chunks)


def test_utf16_stream_is_refused():
    refused(BARE_HEADER.decode().encode("utf-16"), "unsupported-encoding")


def test_declared_other_encoding():
    refused(b"<?xml version='1.0' encoding='ISO-8859-1'?>" + BARE_HEADER, "unsupported-encoding")
    refused(None, "unsupported-encoding", chunks=[b"<?xml version='1.0' enc", b"oding='UTF-16'?>"])


@pytest.mark.parametrize("header", [
    b"<stream xmlns='jabber:client'>",  # right name, no stream namespace
    b"<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong'>",
    b"<stream:features xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    b"<message xmlns='jabber:client'>",
])
def test_wrong_root(header):
    refused(header, "invalid-namespace")


@pytest.mark.parametrize("default", [b" xmlns='jabber:server'", b" xmlns='urn:other'", b""])
def test_wrong_default_namespace(default):
    header = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'" + default + b">"
    refused(header, "invalid-namespace")


def test_undeclared_prefixes():
    refused(b"<stream:stream xmlns='jabber:client'>", "bad-namespace-prefix")
    refused(BARE_HEADER + b"<message><foo:bar/></message>", "bad-namespace-prefix")
    refused(BARE_HEADER + b"<message foo:x='1'/>", "bad-namespace-prefix")


@pytest.mark.parametrize("junk", [b"hello", b"<presence/>hello", b"<![CDATA[x]]>"])
def test_text_between_stanzas(junk):
    refused(BARE_HEADER + junk + b"<presence/>", "bad-format")


@pytest.mark.parametrize("junk", [
    b"<message></iq>", b"<message a='1' a='2'/>", b"<<", b"<message>&#0;</message>",
    b"<message>&</message>", b"<message a='<'/>", b"\x00", b"<1/>",
])
def test_malformed_xml(junk):
    error = refused(BARE_HEADER + junk + b"<presence/>", "not-well-formed")
    assert not isinstance(error, etree.LxmlError)


def test_error_is_sticky():
    parser = StreamParser()
    refused(BARE_HEADER + b"<!---->", "restricted-xml", parser=parser)
    refused(b"<presence/>", "restricted-xml", parser=parser)


@pytest.mark.parametrize("start", [b"<?x?>", b"<?xml?>", b"<?xmlfoo bar?>", b"<?pi?>"])
def test_processing_instruction_at_stream_start(start):
    for chunks in splits(start + BARE_HEADER):
        refused(None, "restricted-xml", chunks=chunks)


def test_endless_declaration_is_refused():
    refused(b"<?xml version='1.0' " + b" " * 1000, "not-well-formed")


@pytest.mark.parametrize("payload", [b"<q xmlns='urn}x'/>", b"<q xmlns='a b'/>", b"<q xmlns:p=''/>"])
def test_namespace_names_that_are_no_uris(payload):
    refused(BARE_HEADER + b"<iq>" + payload + b"</iq>", "not-well-formed")


def test_relative_namespace_warnings_are_tolerated_and_do_not_hide_errors():
    parser = StreamParser()
    parser.feed(BARE_HEADER)
    for _ in range(300):
        assert len(parser.feed(b"<iq><q xmlns='relative'/></iq>")) == 1
    refused(b"<iq><x:y/></iq>", "bad-namespace-prefix", parser=parser)


FUZZ_TOKENS = [b"<", b">", b"&", b";", b"<!", b"<?", b"]]>", b"<![CDATA[", b"\xff", b"\xc3", b"'",
               b"/", b"</message>", b"<a>", b"&amp;", b"&#", b"x:", b"\x00", b" "]


def mutated_streams(seed, streams, tokens=FUZZ_TOKENS, count=400):
    """A small seeded fuzz: each of `streams` with 1-4 tokens written over it, cut in chunks."""
    rnd = random.Random(seed)
    for _ in range(count):
        data = bytearray(rnd.choice(streams))
        for _ in range(rnd.randint(1, 4)):
            at = rnd.randrange(len(data))
            data[at:at + rnd.choice([0, 1, 3])] = rnd.choice(tokens)
        size = rnd.choice([1, 3, 50, 1000])
        yield [bytes(data[i:i + size]) for i in range(0, len(data), size)]


def test_mutated_streams_give_stream_errors_or_standalone_stanzas():
    """Nothing but StreamError may escape, and every stanza re-parses strictly."""
    for chunks in mutated_streams(6120, [STREAM, BILLION_LAUGHS]):
        try:
            for event in feed_all(chunks):
                if isinstance(event, StanzaReceived):
                    strict = etree.XMLPullParser()
                    strict.feed(etree.tostring(event.element))
                    strict.close()  # raises on namespace errors too, unlike feed()
        except StreamError:
            pass
