"""RFC 6120 stream errors (§4.9) and stanza errors (§8.3) as exceptions that know their XML."""

from __future__ import annotations

from lxml import etree

from appliance.proto import ns

STREAM_CONDITIONS = frozenset({
    "bad-format", "bad-namespace-prefix", "conflict", "connection-timeout", "host-gone",
    "host-unknown", "improper-addressing", "internal-server-error", "invalid-from",
    "invalid-namespace", "invalid-xml", "not-authorized", "not-well-formed", "policy-violation",
    "remote-connection-failed", "reset", "resource-constraint", "restricted-xml", "see-other-host",
    "system-shutdown", "undefined-condition", "unsupported-encoding", "unsupported-feature",
    "unsupported-stanza-type", "unsupported-version",
})

# RFC 6120 §8.3.3: each stanza error condition with its usual error type.
STANZA_CONDITIONS = {
    "bad-request": "modify", "conflict": "cancel", "feature-not-implemented": "cancel",
    "forbidden": "auth", "gone": "cancel", "internal-server-error": "cancel",
    "item-not-found": "cancel", "jid-malformed": "modify", "not-acceptable": "modify",
    "not-allowed": "cancel", "not-authorized": "auth", "policy-violation": "modify",
    "recipient-unavailable": "wait", "redirect": "modify", "registration-required": "auth",
    "remote-server-not-found": "cancel", "remote-server-timeout": "wait",
    "resource-constraint": "wait", "service-unavailable": "cancel", "subscription-required": "auth",
    "undefined-condition": "cancel", "unexpected-request": "wait",
}


class StreamError(Exception):
    """A fatal stream-level error: the stream is closed after it is sent."""

    def __init__(self, condition: str, text: str = "") -> None:
        assert condition in STREAM_CONDITIONS, condition
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text

    def to_xml(self) -> bytes:
        root = etree.Element(f"{{{ns.STREAM}}}error", nsmap={"stream": ns.STREAM})
        etree.SubElement(root, f"{{{ns.STREAM_ERRORS}}}{self.condition}", nsmap={None: ns.STREAM_ERRORS})
        if self.text:
            text = etree.SubElement(root, f"{{{ns.STREAM_ERRORS}}}text", nsmap={None: ns.STREAM_ERRORS})
            text.text = self.text
        return etree.tostring(root, encoding="utf-8", xml_declaration=False)


class StanzaError(Exception):
    """A recoverable error about one stanza, answered with type='error'."""

    def __init__(self, condition: str, text: str = "", type_: str | None = None) -> None:
        assert condition in STANZA_CONDITIONS, condition
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
        self.type = type_ or STANZA_CONDITIONS[condition]

    def to_element(self, client_ns: str = ns.CLIENT) -> etree._Element:
        error = etree.Element(f"{{{client_ns}}}error", type=self.type)
        etree.SubElement(error, f"{{{ns.STANZA_ERRORS}}}{self.condition}", nsmap={None: ns.STANZA_ERRORS})
        if self.text:
            text = etree.SubElement(error, f"{{{ns.STANZA_ERRORS}}}text", nsmap={None: ns.STANZA_ERRORS})
            text.text = self.text
        return error
