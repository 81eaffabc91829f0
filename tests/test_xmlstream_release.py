"""StreamParser.release(): the lxml parser of an idle stream is dropped between stanzas and rebuilt
from the stream header on the next bytes, with every guarantee of the parser kept."""

import gc

import pytest
from lxml import etree

from appliance.proto.errors import StreamError
from appliance.proto.xmlstream import StanzaReceived, StreamEnded, StreamOpened, StreamParser
from tests.test_xmlstream import (BARE_HEADER, BILLION_LAUGHS, FUZZ_TOKENS, HEADER, MESSAGE, RESTRICTED, STANZAS,
                                  describe, mutated_streams, splits)

# Prefixed namespaces, a '>' in an attribute value, line breaks and both quote styles in the header.
PREFIXED_HEADER = (b"<?xml version='1.0'?>\n<stream:stream\n to='example.com' version=\"1.0\" id='a>b' "
                   b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'\n"
                   b"   xmlns:x=\"urn:example:x\" xmlns:y='urn:example:y' xml:lang='de'>")
PREFIXED = (b"<message to='a@b'><x:data x:kind='1'><y:leaf/></x:data><body>hallo</body></message>"
            b"<iq type='get' id='q'><x:query/></iq>")
STREAM = PREFIXED_HEADER + b"\n" + STANZAS + PREFIXED + b"<presence/> </stream:stream>"


class Releasing(StreamParser):
    """Tries to release its lxml parser before every feed: as many rebuilds as a stream can get."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.releases = 0

    def feed(self, data: bytes):
        self.releases += self.release()
        return super().feed(data)


def outcome(chunks, parser):
    """Events as comparable values, or the stream error's condition."""
    events = []
    try:
        for chunk in chunks:
            events += parser.feed(chunk)
    except StreamError as error:
        return describe(events), error.condition
    return describe(events), None


def test_release_only_between_stanzas():
    parser = StreamParser()
    assert not parser.release()  # no header yet
    parser.feed(BARE_HEADER)
    assert parser.release() and parser.released
    assert parser.feed(b"<message><body>half") == []
    assert not parser.release()  # mid-stanza: a stanza is never split across a release
    assert not parser.released
    events = parser.feed(b" and the rest</body></message>")
    assert etree.tostring(events[0].element) == b'<message xmlns="jabber:client"><body>half and the rest</body></message>'
    assert parser.release()


@pytest.mark.parametrize("tail", [
    b"<",                        # a '<' the byte scanner holds back, undecided
    b"<presence",                # an unfinished start tag
    b"<presence to='a>b'",       # ... with a '>' inside an attribute value
    b"</stream:stream",          # an unfinished stream end
    b"<message><body>&am",       # a partial reference
    b"<message><body><![CDATA[x",  # inside CDATA
    b"<message><body>\xc3",      # a partial UTF-8 sequence
])
def test_nothing_held_back_anywhere_is_released(tail):
    parser = StreamParser()
    parser.feed(BARE_HEADER + b"<presence/>" + tail)
    assert not parser.release()


def test_whitespace_keepalives_after_a_release():
    parser = StreamParser()
    parser.feed(BARE_HEADER + b"<presence/>")
    for _ in range(3):
        assert parser.release()
        assert parser.feed(b" \n") == []
    assert parser.release()
    assert len(parser.feed(b"<presence/>")) == 1


def test_stanzas_after_a_rebuild_parse_identically_with_prefixed_namespaces():
    plain = describe(StreamParser().feed(PREFIXED_HEADER + PREFIXED))
    parser = StreamParser()
    rebuilt = describe(parser.feed(PREFIXED_HEADER))
    assert parser.release()
    rebuilt += describe(parser.feed(PREFIXED[:20]))
    rebuilt += describe(parser.feed(PREFIXED[20:]))
    assert rebuilt == plain
    assert rebuilt[0] == StreamOpened({"to": "example.com", "version": "1.0", "id": "a>b", "lang": "de"})
    data = etree.fromstring(rebuilt[1]).find("{urn:example:x}data")
    assert data is not None and data.get("{urn:example:x}kind") == "1"
    assert data[0].tag == "{urn:example:y}leaf"
    assert b'xmlns:x="urn:example:x"' in rebuilt[1] and b'xmlns:y="urn:example:y"' in rebuilt[1]


@pytest.mark.parametrize("header", [HEADER, BARE_HEADER, PREFIXED_HEADER, b"\xef\xbb\xbf" + HEADER])
def test_every_split_with_releases_gives_the_same_events(header):
    stream = header + b"\n" + STANZAS + PREFIXED.replace(b"x:", b"").replace(b"y:", b"") + b"</stream:stream>"
    whole = describe(StreamParser().feed(stream))
    for chunks in splits(stream):
        parser = Releasing()
        assert outcome(chunks, parser) == (whole, None)
    parser = Releasing()
    assert outcome([stream[i:i + 1] for i in range(len(stream))], parser) == (whole, None)
    assert parser.releases > 5  # one between each stanza at least


def test_header_fed_byte_by_byte_is_replayed_exactly():
    parser = Releasing()
    events = []
    for i in range(len(PREFIXED_HEADER)):
        events += parser.feed(PREFIXED_HEADER[i:i + 1])
    assert parser._header == PREFIXED_HEADER  # white-box: what a rebuild feeds the new parser
    events += parser.feed(PREFIXED)
    assert parser.releases == 1
    assert describe(events) == describe(StreamParser().feed(PREFIXED_HEADER + PREFIXED))


def test_only_one_stream_opened_and_the_end_still_detected():
    parser = StreamParser()
    assert parser.feed(PREFIXED_HEADER)[0].attrs["id"] == "a>b"
    assert parser.release()
    assert parser.feed(b"<presence/>")[0].element.tag == "{jabber:client}presence"
    assert parser.release()
    assert parser.feed(b"</stream:stream>") == [StreamEnded()]
    assert not parser.release()


@pytest.mark.parametrize("name", [n for n in RESTRICTED if RESTRICTED[n].startswith(BARE_HEADER)])
def test_restricted_xml_after_a_rebuild(name):
    rest = RESTRICTED[name][len(BARE_HEADER):]
    for chunks in splits(rest):
        parser = StreamParser()
        parser.feed(BARE_HEADER)
        assert parser.release()
        assert outcome(chunks, parser)[1] == "restricted-xml"


@pytest.mark.parametrize("data, condition", [
    (b"<a>" * 40, "policy-violation"),                                   # depth
    (b"<message><body>" + b"x" * 9000 + b"</body></message>", "policy-violation"),   # size
    (b"<message><foo:bar/></message>", "bad-namespace-prefix"),
    (b"<message><x:bar/></message><iq><z:q/></iq>", "bad-namespace-prefix"),  # x: is declared, z: not
    (b"hello<presence/>", "bad-format"),
    (b"<message></iq>", "not-well-formed"),
    (b"<message><body>\xff</body></message>", "unsupported-encoding"),
    (b"<?xml version='1.0'?>", "restricted-xml"),                       # no second declaration
])
def test_limits_hold_after_a_rebuild(data, condition):
    parser = StreamParser(max_depth=32, max_stanza_bytes=4096)
    parser.feed(PREFIXED_HEADER + b"<presence/>")
    assert parser.release()
    assert outcome([data], parser)[1] == condition
    assert not parser.release()  # a failed parser stays failed
    with pytest.raises(StreamError):
        parser.feed(b"<presence/>")


def test_a_big_stanza_after_a_rebuild_is_refused_early():
    parser = StreamParser(max_stanza_bytes=8192)
    parser.feed(BARE_HEADER)
    assert parser.release()
    with pytest.raises(StreamError) as info:
        for _ in range(100):
            parser.feed(b"<message><body>" + b"x" * 4096)
    assert info.value.condition == "policy-violation"
    assert parser.bytes_fed < len(BARE_HEADER) + 8192 + 2 * 4200


def test_memory_of_a_released_parser():
    parser = StreamParser()
    parser.feed(BARE_HEADER + MESSAGE)
    assert parser.release()
    assert parser._lxml is None and parser._root is None  # white-box: the lxml objects are gone
    assert parser._header == BARE_HEADER and not parser._head


def test_mutated_streams_give_the_same_outcome_with_releases():
    """A seeded fuzz: releasing wherever possible changes no event and no stream error."""
    tokens = [*FUZZ_TOKENS, b"z:", b"<presence/>"]
    for chunks in mutated_streams(6121, [STREAM, BILLION_LAUGHS], tokens):
        assert outcome(chunks, Releasing()) == outcome(chunks, StreamParser()), b"".join(chunks)


def test_stanzas_stay_standalone_after_a_rebuild():
    parser = Releasing()
    events = [e for chunk in (PREFIXED_HEADER, PREFIXED, PREFIXED) for e in parser.feed(chunk)]
    stanzas = [e.element for e in events if isinstance(e, StanzaReceived)]
    assert len(stanzas) == 4 and parser.releases == 2
    for stanza in stanzas:
        assert stanza.getparent() is None and stanza.tail is None
        strict = etree.XMLPullParser()
        strict.feed(etree.tostring(stanza))
        strict.close()  # raises on an undeclared prefix


def _pull_parsers() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, etree.XMLPullParser))


def test_a_released_parser_is_freed_at_once_even_with_its_stanzas_kept():
    """No cycle collection needed (lxml's parser and document refer to each other while the root
    is open), and stored stanzas do not keep the parser that built them alive."""
    gc.collect()
    gc.disable()
    try:
        before = _pull_parsers()
        parsers = [StreamParser() for _ in range(10)]
        kept = [p.feed(PREFIXED_HEADER + b"<presence><x:y/></presence>")[1].element for p in parsers]
        assert _pull_parsers() == before + 10
        assert all(p.release() for p in parsers)
        assert _pull_parsers() == before
        assert all(etree.tostring(k) == etree.tostring(kept[0]) for k in kept)
        assert etree.tostring(kept[0]) == b'<presence xmlns="jabber:client" xmlns:x="urn:example:x"><x:y/></presence>'
    finally:
        gc.enable()
