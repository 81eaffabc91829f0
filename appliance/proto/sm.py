"""XEP-0198 stream management, sans-I/O: the two counters and the queue of unacknowledged stanzas.

Stanzas are counted as sent when they are handed to the transport, not when the write finishes:
if the connection breaks mid-write, the client's <a h=.../> on resumption says how many it really
got, and everything after that is sent again.
"""

from __future__ import annotations

from lxml import etree

from appliance.proto import ns
from appliance.proto.errors import StreamError
from appliance.proto.stanza import Element

MOD = 2 ** 32  # h wraps at 2^32 (XEP-0198 §4)
REQUEST = f"<r xmlns='{ns.SM}'/>".encode()


class StreamManagement:
    __slots__ = ("id", "max_resume", "handled", "sent", "acked", "unacked", "counting", "request_pending")

    def __init__(self, resumption_id: str | None, max_resume: int) -> None:
        self.id = resumption_id          # None: acks only, no resumption
        self.max_resume = max_resume     # seconds the session is kept after the link breaks
        self.handled = 0                 # stanzas received from the client and fully handled
        self.sent = 0                    # stanzas handed to the transport since <enabled/>
        self.acked = 0                   # the client's last h
        self.unacked: list[Element] = []  # oldest first; a list, as few are ever waiting
        self.counting = False            # set once <enabled/> itself has been written
        self.request_pending = False

    @property
    def resumable(self) -> bool:
        return self.id is not None

    def received(self) -> None:
        self.handled = (self.handled + 1) % MOD

    def sending(self, stanza: Element) -> None:
        if self.counting:
            self.sent = (self.sent + 1) % MOD
            self.unacked.append(stanza)

    def ack(self, h: int) -> list[Element]:
        """The client has handled `h` stanzas in all: return the ones this acknowledges, oldest first."""
        count = (h - self.acked) % MOD
        if count > len(self.unacked):
            raise StreamError("undefined-condition",
                              f"handled-count-too-high: h={h} but only {self.sent} stanzas were sent")
        self.acked = h
        self.request_pending = False
        acknowledged = self.unacked[:count]
        del self.unacked[:count]
        return acknowledged

    def resume_from(self, h: int) -> list[Element]:
        """On resumption: drop what the client says it has, return the rest to send again, and
        count from h (the retransmitted stanzas are counted anew as they are sent)."""
        self.ack(h)
        again, self.unacked = self.unacked, []
        self.sent = h
        return again

    def ack_xml(self, h: int | None = None) -> bytes:
        """<a/> with the handled count, or with `h` (a count known to be durable already)."""
        return f"<a xmlns='{ns.SM}' h='{self.handled if h is None else h}'/>".encode()

    def enabled_xml(self) -> bytes:
        if self.id is None:
            return f"<enabled xmlns='{ns.SM}'/>".encode()
        return f"<enabled xmlns='{ns.SM}' id='{self.id}' resume='true' max='{self.max_resume}'/>".encode()

    def resumed_xml(self, previd: str) -> bytes:
        return f"<resumed xmlns='{ns.SM}' h='{self.handled}' previd='{previd}'/>".encode()


def failed_xml(condition: str, h: int | None = None) -> bytes:
    h_attr = f" h='{h}'" if h is not None else ""
    return f"<failed xmlns='{ns.SM}'{h_attr}><{condition} xmlns='{ns.STANZA_ERRORS}'/></failed>".encode()


def parse_h(element: Element) -> int:
    try:
        h = int(element.get("h", ""))
    except ValueError:
        raise StreamError("bad-format", "h must be an unsigned 32-bit integer") from None
    if not 0 <= h < MOD:
        raise StreamError("bad-format", "h must be an unsigned 32-bit integer")
    return h


def is_true(value: str | None) -> bool:
    return value in ("true", "1")


def local(element: Element) -> str:
    return etree.QName(element).localname
