"""Sans-I/O parser for one direction of an XMPP stream (RFC 6120 §4), hardened per §11.

Each slice of input passes UTF-8 validation (invalid UTF-8 is `unsupported-encoding`, §4.9.3.22),
then a byte scan for what §11.1 forbids (`restricted-xml`), then lxml's push parser with entities,
DTDs and network off, under our size and depth limits. CDATA sections are accepted: §11.1 does
not forbid them, and the scanner steps over their content.
"""

from __future__ import annotations

import codecs
import re
import threading
from dataclasses import dataclass

from lxml import etree

from appliance.proto import ns
from appliance.proto.errors import StreamError

_STREAM_TAG = f"{{{ns.STREAM}}}stream"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_HEADER_ATTRS = ("to", "from", "id", "version")
_XML_WS = " \t\r\n"
_XML_WS_BYTES = b" \t\r\n"
# lxml gets at most this much per feed() call, so one huge chunk cannot be buffered whole.
_SLICE = 65536
_MAX_DECL = 512  # an XML declaration is held back until complete; bound how long it may get

_MARKUP = re.compile(rb"<[!?]|&|<\Z")  # what the scanner must look at; a final '<' is undecided
_REFS = (b"lt;", b"gt;", b"amp;", b"apos;", b"quot;")
_CDATA = b"<![CDATA["
_BOM = b"\xef\xbb\xbf"
_DECL_START = re.compile(rb"<\?xml[ \t\r\n]")
_DECL_ENCODING = re.compile(rb"""[ \t\r\n]encoding[ \t\r\n]*=[ \t\r\n]*(["'])(.*?)\1""", re.S)
_NAME_START = re.compile(rb"[A-Za-z_:\x80-\xff]")
# A tag up to its '>' (quoted attribute values may contain '>'); the first one that is no '<?' or
# '<!' is the stream header. Only used on bytes lxml has accepted.
_TAG = re.compile(rb"""<[^?!](?:[^'">]|'[^']*'|"[^"]*")*>""")
_TAIL_MAX = 1024  # release() looks at the bytes since the last '<' when there are no more than this


@dataclass(frozen=True, slots=True)
class StreamOpened:
    attrs: dict[str, str]  # 'to', 'from', 'id', 'version', 'lang' (from xml:lang) when present


@dataclass(frozen=True, slots=True)
class StanzaReceived:
    element: etree._Element  # detached depth-1 child, e.g. '{jabber:client}message'


@dataclass(frozen=True, slots=True)
class StreamEnded:
    pass


Event = StreamOpened | StanzaReceived | StreamEnded


def _restricted(what: str) -> StreamError:
    return StreamError("restricted-xml", f"{what} not allowed in XMPP (RFC 6120 §11.1)")


class _RestrictedScanner:
    """Finds DTDs, comments, PIs and entity references in the raw bytes, before lxml sees them.

    A byte scan is sound because outside CDATA sections '<' and '&' only ever start markup:
    both are illegal unescaped in attribute values and text. An undecided suffix (a lone '<', a
    partial '&amp;', '<![CDA', an unfinished XML declaration) is held back and scanned again with
    the next chunk, so a split at any byte boundary cannot hide anything.
    """

    __slots__ = ("_held", "_offset", "_head", "_in_cdata", "start_tags")

    def __init__(self) -> None:
        self._held = b""
        self._offset = 0  # stream offset of the first byte of the next buffer
        self._head = b""  # first three bytes of the stream, to allow a BOM before <?xml
        self._in_cdata = False
        self.start_tags = 0  # '<' that open a start tag, released to lxml so far

    @property
    def holding(self) -> bool:
        """Bytes held back undecided, or inside a CDATA section."""
        return bool(self._held) or self._in_cdata

    def scan(self, data: bytes) -> tuple[bytes, StreamError | None]:
        """Returns the bytes that are safe to parse now, and the violation that follows them."""
        if len(self._head) < 3:
            self._head = (self._head + data)[:3]
        buf = self._held + data if self._held else data
        if not self._in_cdata and _MARKUP.search(buf) is None:  # the usual case, kept cheap
            self._held = b""
            self._offset += len(buf)
            self.start_tags += buf.count(b"<") - buf.count(b"</")
            return buf, None
        cut, error = self._scan(buf)
        self._held = buf[cut:] if error is None else b""
        self._offset += cut
        return (buf if cut == len(buf) else buf[:cut]), error

    def _scan(self, buf: bytes) -> tuple[int, StreamError | None]:
        pos = seg = 0  # seg: start of the released region whose start tags are not yet counted
        while True:
            if self._in_cdata:
                end = buf.find(b"]]>", pos)
                if end < 0:
                    return max(pos, len(buf) - 2), None  # hold a possibly split ']]'
                pos = seg = end + 3
                self._in_cdata = False
            match = _MARKUP.search(buf, pos)
            if match is None:
                self._count_tags(buf, seg, len(buf))
                return len(buf), None
            at, kind = match.start(), match.group()
            if kind == b"&":
                verdict = self._reference(buf, at)
                if verdict is True:
                    pos = at + 1
                    continue
                self._count_tags(buf, seg, at)
                return at, verdict  # None: undecided, held back
            self._count_tags(buf, seg, at)
            if kind == b"<":
                return at, None  # a final '<', held back
            resume = self._markup(buf, at)
            if isinstance(resume, StreamError):
                return at, resume
            if resume == at:
                return at, None  # held back until more bytes arrive
            pos = seg = resume

    def _count_tags(self, buf: bytes, start: int, stop: int) -> None:
        if stop > start:
            self.start_tags += buf.count(b"<", start, stop) - buf.count(b"</", start, stop)

    @staticmethod
    def _reference(buf: bytes, at: int) -> bool | StreamError | None:
        """True for a predefined entity or character reference, None if more bytes are needed."""
        rest = buf[at + 1:at + 6]
        if rest[:1] == b"#" or rest.startswith(_REFS):
            return True
        if len(rest) < 5 and any(ref.startswith(rest) for ref in _REFS):
            return None
        if _NAME_START.match(rest):
            return _restricted("entity reference")
        return StreamError("not-well-formed", "'&' not starting a reference")

    def _markup(self, buf: bytes, at: int) -> int | StreamError:
        """Handles '<!' or '<?' at `at`: returns where scanning resumes (`at` = wait for more)."""
        if buf[at + 1:at + 2] == b"!":
            if buf.startswith(_CDATA, at):
                self._in_cdata = True
                return at + len(_CDATA)
            if _CDATA.startswith(buf[at:]):
                return at
            return _restricted("DTD or comment")
        start = self._offset + at
        if start == 0 or (start == 3 and self._head == _BOM):
            return self._declaration(buf, at)
        return _restricted("processing instruction")

    @staticmethod
    def _declaration(buf: bytes, at: int) -> int | StreamError:
        """The XML declaration: allowed at the stream start, and it must not ask for another encoding."""
        end = buf.find(b"?>", at)
        if end < 0 and len(buf) - at < 6:
            return at  # too short to tell '<?xml ' from another PI yet
        if not _DECL_START.match(buf, at):
            return _restricted("processing instruction")
        if end < 0:  # wait for the rest, within reason
            too_long = len(buf) - at > _MAX_DECL
            return StreamError("not-well-formed", "XML declaration too long") if too_long else at
        encoding = _DECL_ENCODING.search(buf, at, end)
        if encoding and encoding.group(2).lower() not in (b"utf-8", b"utf8"):
            return StreamError("unsupported-encoding", "XMPP streams are UTF-8 (RFC 6120 §11.6)")
        return end + 2


class StreamParser:
    """Parses one stream header, its stanzas and its end; a stream restart needs a new parser.

    After a StreamError the parser is dead and raises the same error again; events of the failing
    feed() call are dropped (the connection is closed anyway).

    release() drops the lxml parser (about 10 KiB) between stanzas, e.g. while a connection is
    idle; the next feed() builds a new one from the stream header as it was received, so
    namespaces declared on the header keep applying, and goes on as if nothing had happened.
    """

    # One per connection, kept while it is idle: no instance dict (tests/test_session_footprint.py).
    __slots__ = ("_max_bytes", "_slice", "_max_depth", "_default_ns", "_lxml", "_scanner", "_utf8",
                 "_utf8_partial", "_root", "_level", "_starts", "_pending", "_last_byte", "_boundary",
                 "_ended", "_failed", "_logged", "_head", "_tail", "_header", "bytes_fed")

    def __init__(self, *, max_stanza_bytes: int = 262144, max_depth: int = 32,
                 default_ns: str = ns.CLIENT) -> None:
        self._max_bytes = max_stanza_bytes
        self._slice = max(4096, min(_SLICE, max_stanza_bytes))  # small limits get precise checks
        self._max_depth = max_depth
        self._default_ns = default_ns
        self._lxml: etree.XMLPullParser | None = self._new_lxml()
        self._scanner = _RestrictedScanner()
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._utf8_partial = 0  # bytes of an unfinished UTF-8 sequence inside the decoder
        self._root: etree._Element | None = None
        self._level = 0  # open elements, root included: a stanza is level 2
        self._starts = 0  # start events seen, compared with the scanner's start tags
        self._pending = 0  # bytes fed since the stream was last known to be between stanzas
        self._last_byte = 0  # last non-whitespace byte given to lxml
        self._boundary = False  # a stanza (or the header) completed in the current slice
        self._ended = False
        self._failed: StreamError | None = None
        self._logged = 0  # entries seen in lxml's feed error log
        self._head = bytearray()  # bytes given to lxml before the header was complete
        self._tail: bytes | None = b""  # bytes given to lxml since the last '<' (None: too many)
        self._header = b""  # the stream header as received, to rebuild a released parser
        self.bytes_fed = 0

    def feed(self, data: bytes) -> list[Event]:
        if self._failed is not None:
            raise self._failed
        if self._lxml is None:
            self._rebuild()
        events: list[Event] = []
        try:
            for start in range(0, len(data), self._slice):
                if self._ended:  # bytes after </stream:stream> are ignored
                    self.bytes_fed += len(data) - start
                    break
                self._feed_slice(data[start:start + self._slice], events)
        except StreamError as exc:
            self._failed = exc
            raise
        return events

    def _feed_slice(self, data: bytes, events: list[Event]) -> None:
        self.bytes_fed += len(data)
        valid, error = self._check_utf8(data)
        safe, scan_error = self._scanner.scan(valid)
        self._boundary = False
        self._parse(safe, events)
        if self._ended:
            return
        if scan_error or error:
            raise scan_error or error  # type: ignore[misc]
        self._sweep_root_text()
        self._check_size(len(data))

    def _check_utf8(self, data: bytes) -> tuple[bytes, StreamError | None]:
        if not self._utf8_partial and data.isascii():
            return data, None  # the common case costs one C-level scan
        try:
            self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            bad = max(0, exc.start - self._utf8_partial)
            return data[:bad], StreamError("unsupported-encoding", "invalid UTF-8 (RFC 6120 §4.9.3.22)")
        self._utf8_partial = len(self._utf8.getstate()[0])
        return data, None

    # ---- releasing the lxml parser while idle ---------------------------------------------------

    @property
    def released(self) -> bool:
        return self._lxml is None

    def release(self) -> bool:
        """Drop the lxml parser if the stream is between stanzas with nothing held back anywhere
        (the byte scanner, the UTF-8 decoder, libxml2); False, and nothing changes, otherwise."""
        if (self._lxml is None or self._root is None or self._ended or self._failed is not None
                or not self._between() or self._utf8_partial or self._scanner.holding
                or not self._only_whitespace_after_last_tag()):
            return False
        self._finish_lxml(self._lxml, self._root.prefix)
        self._lxml = self._root = None
        return True

    @staticmethod
    def _finish_lxml(parser: etree.XMLPullParser, prefix: str | None) -> None:
        """End lxml's document before dropping its parser: while the root is open, lxml's parser,
        its context and its document refer to one another, and only the cycle collector (a full
        collection: the parser is old by now) would free them; ended, they go at once."""
        end = f"</{prefix}:stream>" if prefix else "</stream>"
        try:
            parser.feed(end.encode())
            for _ in parser.read_events():
                pass
            parser.close()
        except etree.LxmlError:
            pass  # then the cycle collector frees it

    def _only_whitespace_after_last_tag(self) -> bool:
        """libxml2 holds back text until it sees the next '<' (text may contain '>'): text after
        the last tag would be lost with the parser, and with it the bad-format it is due."""
        tail = self._tail
        if tail is None or tail.startswith(b"<!"):
            return False  # a long tail, or root-level CDATA: keep the parser, to be sure
        tag = _TAG.match(tail)
        return tag is not None and not tail[tag.end():].strip(_XML_WS_BYTES)

    def _rebuild(self) -> None:
        """A fresh lxml parser in the state the released one was in: inside the stream header."""
        self._lxml = self._new_lxml()
        self._lxml.feed(self._header)
        events = list(self._lxml.read_events())
        assert len(events) == 1 and events[0][0] == "start", events  # the header, accepted before
        self._root = events[0][1]
        self._logged = len(self._lxml.feed_error_log)

    def _between(self) -> bool:
        """Between stanzas when none is open, every start tag given to lxml has come back as an
        event, and the last byte closed a tag: then libxml2 holds at most text after the last tag,
        which it reports (and _sweep_root_text refuses) once it sees a '<' or a few hundred bytes.
        (A partial end tag -- only </stream:stream> is possible here -- ends in a name byte.)"""
        return (self._level == 1 and self._starts == self._scanner.start_tags
                and self._last_byte == ord(">"))

    @staticmethod
    def _new_lxml() -> etree.XMLPullParser:
        # encoding is forced so libxml2 never switches (e.g. to UTF-16) behind the byte scanner.
        return etree.XMLPullParser(
            events=("start", "end"), encoding="utf-8", resolve_entities=False, load_dtd=False,
            no_network=True, huge_tree=False)

    # ---- parsing ----------------------------------------------------------------------------------

    def _parse(self, data: bytes, events: list[Event]) -> None:
        if not data:
            return
        if self._root is None:
            self._head += data  # bounded like a stanza: _check_size counts it
        lt = data.rfind(b"<")
        if lt >= 0:
            self._tail = data[lt:] if len(data) - lt <= _TAIL_MAX else None
        elif self._tail is not None:
            self._tail = self._tail + data if len(self._tail) + len(data) <= _TAIL_MAX else None
        last = data[-1]
        if last in _XML_WS_BYTES:
            stripped = data.rstrip(_XML_WS_BYTES)
            last = stripped[-1] if stripped else self._last_byte
        self._last_byte = last
        try:
            self._lxml.feed(data)
        except etree.LxmlError as exc:
            self._drain(events)  # events before the error may show a depth violation or the end
            if not self._ended:
                raise _from_lxml(exc) from None
            return
        self._check_namespaces()
        self._drain(events)

    def _check_namespaces(self) -> None:
        # libxml2 only logs namespace errors (undeclared prefix, namespace name that is no URI);
        # lxml raises them at close(), which a stream never reaches, and passing such XML on
        # would break recipients. Warnings (relative URIs) are fine: libxml2 logs at most 100.
        log = self._lxml.feed_error_log
        if len(log) == self._logged:
            return
        self._logged = len(log)
        for entry in log.filter_from_errors():
            undeclared = entry.type == etree.ErrorTypes.NS_ERR_UNDEFINED_NAMESPACE
            raise StreamError("bad-namespace-prefix" if undeclared else "not-well-formed", entry.message)

    def _drain(self, events: list[Event]) -> None:
        deepest = self._max_depth + 1  # in levels: the root is level 1, a stanza level 2
        for action, el in self._lxml.read_events():
            if action == "start":
                self._starts += 1
                self._level += 1
                if self._level > deepest:
                    raise StreamError("policy-violation", f"elements nested deeper than {self._max_depth}")
                if self._level == 1:
                    events.append(self._open(el))
                continue
            self._level -= 1
            if self._level == 1:
                events.append(StanzaReceived(self._detach(el)))
            elif self._level == 0:
                events.append(StreamEnded())
                self._ended = True
                return

    def _open(self, root: etree._Element) -> StreamOpened:
        if root.tag != _STREAM_TAG:
            raise StreamError("invalid-namespace", f"root must be {{{ns.STREAM}}}stream")
        if root.nsmap.get(None) != self._default_ns:
            raise StreamError("invalid-namespace", f"default namespace must be {self._default_ns}")
        attrs = {name: value for name in _HEADER_ATTRS if (value := root.get(name)) is not None}
        if (lang := root.get(_XML_LANG)) is not None:
            attrs["lang"] = lang
        self._root = root
        self._boundary = True
        header = _TAG.search(self._head)
        assert header is not None  # lxml has just reported this start tag
        self._header, self._head = bytes(self._head[:header.end()]), bytearray()
        return StreamOpened(attrs)

    def _detach(self, el: etree._Element) -> etree._Element:
        """Hands out a standalone copy and drops the original, so memory stays flat.

        The copy prints as <message xmlns="jabber:client">; merely removing the original would
        print it as <ns0:message xmlns:ns0=...>. Only finished elements and root text are ever
        removed: libxml2 still points at the open ones.

        A copy's document refers to the parser that built the original, so a stored stanza (a
        presence, a queued message) would keep this stream's lxml parser alive, released or not.
        So the copy is moved into the holder's document (lxml's default parser) and out again: it
        stays there as a parentless element of its own, needing no second copy.
        """
        tail = el.tail
        if tail and tail.strip(_XML_WS):
            raise StreamError("bad-format", "text between stanzas")
        stanza = el.__copy__()  # lxml copies deeply; skips the copy module's memo machinery
        holder = _holder()
        holder.append(stanza)
        holder.remove(stanza)
        stanza.tail = None
        el.clear()  # frees the subtree now, and spares remove() fixing its namespaces
        self._root.remove(el)  # type: ignore[union-attr]
        self._boundary = True
        return stanza

    def _sweep_root_text(self) -> None:
        # Text directly under the stream is well-formed XML but no XMPP (only whitespace
        # keepalives are), hence bad-format rather than not-well-formed. Removing it keeps
        # keepalives from growing a text node forever, and keeps an invariant libxml2 relies
        # on: it appends text to the parent's last child with lengths cached from the text node
        # it wrote last. After _detach that could be an older one, so no feed may start with a
        # text node as the root's last child.
        if self._root is not None and (text := self._root.text):
            if text.strip(_XML_WS):
                raise StreamError("bad-format", "text between stanzas")
            self._root.text = None

    def _check_size(self, size: int) -> None:
        """Bounds what lxml can be holding for one stanza, to within one slice."""
        if self._boundary or self._between():
            self._pending = 0
            return
        self._pending += size
        if self._pending > self._max_bytes:
            raise StreamError("policy-violation", f"stanza larger than {self._max_bytes} bytes")


_holders = threading.local()


def _holder() -> etree._Element:
    """The element whose document a stanza's copy is moved into, so that it refers to lxml's
    default parser rather than its stream's (see StreamParser._detach); it never keeps a child.
    One per thread: lxml's default parser, and its name dictionary, are per thread."""
    holder = getattr(_holders, "holder", None)
    if holder is None:
        holder = _holders.holder = etree.Element("holder")
    return holder


def _from_lxml(exc: Exception) -> StreamError:
    code = getattr(exc, "code", None)
    if code == etree.ErrorTypes.ERR_RESOURCE_LIMIT:  # libxml2's own depth or size ceiling
        return StreamError("policy-violation", "XML beyond the parser's limits")
    if code in (etree.ErrorTypes.ERR_INVALID_ENCODING, etree.ErrorTypes.ERR_UNSUPPORTED_ENCODING):
        return StreamError("unsupported-encoding", "XMPP streams are UTF-8")
    if code in (etree.ErrorTypes.ERR_UNDECLARED_ENTITY, etree.ErrorTypes.WAR_UNDECLARED_ENTITY):
        return _restricted("entity reference")
    return StreamError("not-well-formed", str(exc).split(", line ")[0])
