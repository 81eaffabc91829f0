"""Getting a client connection ready: STARTTLS (RFC 6120 §5), SASL SCRAM (§6; PLAIN never: the
password must not reach a server that merely holds a certificate), then XEP-0198 resumption or
resource binding (§7) with stream management enabled."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from lxml import etree
from scramp import ScramClient, ScramException

from appliance.client.link import Account, AuthRefused, Link, LinkLost, error_of
from appliance.proto import ns
from appliance.proto.sm import MOD
from appliance.proto.stanza import Element, make, sub, to_stream

SCRAM_PREFERENCE = ("SCRAM-SHA-256", "SCRAM-SHA-1")


@dataclass
class SmState:
    """XEP-0198 state kept across connections for resumption. `acked` is the server's last h:
    an <a h=.../> acknowledges the (h - acked) oldest stanzas of `outbound_unacked`."""
    id: str | None
    inbound: int = 0                     # stanzas received since <enabled/> (our h)
    outbound_unacked: list[bytes] = field(default_factory=list)  # sent, not yet acknowledged
    acked: int = 0
    jid: str = ""                        # the full JID the session was bound to

    def acknowledge(self, h: int) -> None:
        count = (h - self.acked) % MOD
        del self.outbound_unacked[:count]
        self.acked = h


@dataclass
class Session:
    """What negotiation leaves for ClientStream."""
    jid: str
    sm: SmState | None       # None: the server offers no stream management
    resumed: bool
    lost: list[bytes]        # an unresumable session's unacknowledged stanzas, to send again
    early: list[Element]     # stanzas that came before <enabled/> (not counted, by either side)


async def starttls(link: Link, account: Account, cafile: str | None) -> Element:
    """Plain stream, <starttls/>, TLS; returns the features of the stream inside TLS."""
    features = await link.start_stream()
    if features.find(f"{{{ns.TLS}}}starttls") is None:
        raise LinkLost("the server does not offer STARTTLS")
    await link.send(f"<starttls xmlns='{ns.TLS}'/>".encode())
    answer = await link.next_element()
    if answer.tag != f"{{{ns.TLS}}}proceed":
        raise LinkLost("the server refused STARTTLS")
    await link.start_tls(account.fingerprint, cafile)
    return await link.start_stream()


async def authenticate(link: Link, account: Account, features: Element) -> Element:
    """SCRAM-SHA-256 if offered, else SCRAM-SHA-1; returns the features of the restarted stream."""
    offered = {m.text for m in features.iterfind(f"{{{ns.SASL}}}mechanisms/{{{ns.SASL}}}mechanism")}
    mechanism = next((m for m in SCRAM_PREFERENCE if m in offered), None)
    if mechanism is None:
        raise AuthRefused("invalid-mechanism", "the server offers no SCRAM mechanism")
    scram = ScramClient([mechanism], account.username, account.password)
    await link.send(_sasl("auth", scram.get_client_first().encode(), mechanism=mechanism))
    try:
        scram.set_server_first(_decoded(await _sasl_step(link, "challenge")).decode())
        await link.send(_sasl("response", scram.get_client_final().encode()))
        scram.set_server_final(_decoded(await _sasl_step(link, "success")).decode())
    except (ScramException, UnicodeDecodeError) as exc:
        # A wrong server signature: this server does not know the password, whatever it says.
        raise LinkLost(f"the server failed SCRAM: {exc}") from exc
    return await link.start_stream(account.jid)


async def _sasl_step(link: Link, expected: str) -> Element:
    element = await link.next_element()
    name = etree.QName(element).localname
    if name == "failure":
        raise AuthRefused(*error_of(element))
    if name != expected or not element.tag.startswith(f"{{{ns.SASL}}}"):
        raise LinkLost(f"SASL: expected <{expected}/>, got <{name}/>")
    return element


def _sasl(name: str, data: bytes, **attrs: str) -> bytes:
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    return f"<{name} xmlns='{ns.SASL}'{extra}>{base64.b64encode(data).decode()}</{name}>".encode()


def _decoded(element: Element) -> bytes:
    text = (element.text or "").strip()
    try:
        return b"" if text in ("", "=") else base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LinkLost(f"SASL: undecodable {etree.QName(element).localname}") from exc


async def establish(link: Link, account: Account, features: Element, resume: SmState | None) -> Session:
    """Resume `resume` if the server still has it, else bind a resource and enable stream management."""
    sm_offered = features.find(f"{{{ns.SM}}}sm") is not None
    lost: list[bytes] = []
    if resume is not None and resume.id and sm_offered:
        session = await _resume(link, resume)
        if isinstance(session, Session):
            return session
        lost = session
    elif resume is not None:
        lost = list(resume.outbound_unacked)
    jid = await _bind(link, account.resource)
    early: list[Element] = []
    sm = await _enable(link, early) if sm_offered else None
    if sm is not None:
        sm.jid = jid
    return Session(jid, sm, False, lost, early)


async def _resume(link: Link, old: SmState) -> Session | list[bytes]:
    """XEP-0198 §5: the Session when resumed (the unacknowledged stanzas sent again), else what
    the server did not get of the old session (all of it, unless <failed/> says h)."""
    await link.send(f"<resume xmlns='{ns.SM}' previd='{old.id}' h='{old.inbound}'/>".encode())
    answer = await _sm_answer(link, [])
    sm = SmState(old.id, old.inbound, list(old.outbound_unacked), old.acked, old.jid)
    if answer.get("h", "").isdigit():
        sm.acknowledge(int(answer.get("h", "")))
    if etree.QName(answer).localname != "resumed":
        return sm.outbound_unacked
    async with link.send_lock:
        for data in sm.outbound_unacked:  # they stay unacknowledged until the next <a/>
            await link.send_unlocked(data)
    return Session(old.jid, sm, True, [], [])


async def _bind(link: Link, resource: str) -> str:
    iq = make("iq", type_="set", id_="bind-1")
    sub(sub(iq, f"{{{ns.BIND}}}bind"), f"{{{ns.BIND}}}resource", resource)
    await link.send(to_stream(iq))
    answer = await link.next_element()
    jid = answer.findtext(f"{{{ns.BIND}}}bind/{{{ns.BIND}}}jid")
    if answer.get("id") != "bind-1" or answer.get("type") != "result" or not jid:
        raise LinkLost("resource binding refused: %s %s" % error_of(answer))
    return jid


async def _enable(link: Link, early: list[Element]) -> SmState | None:
    await link.send(f"<enable xmlns='{ns.SM}' resume='true'/>".encode())
    answer = await _sm_answer(link, early)
    if etree.QName(answer).localname != "enabled":
        return None
    return SmState(answer.get("id") if answer.get("resume") in ("true", "1") else None)


async def _sm_answer(link: Link, early: list[Element]) -> Element:
    """The next stream management element; stanzas before it go to `early`."""
    while True:
        element = await link.next_element()
        if element.tag.startswith(f"{{{ns.SM}}}"):
            if etree.QName(element).localname in ("r", "a"):
                continue  # no counting before <enabled/>/<resumed/>
            return element
        early.append(element)
