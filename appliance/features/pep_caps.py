"""XEP-0115 entity capabilities, as much as PEP needs: what a client's `ver` stands for.

A client's presence carries `<c hash='sha-1' node=... ver=.../>`; the server asks that client
once (disco#info to `node#ver`), checks that the answer hashes to `ver` (§5.1, so one client
cannot teach the server wrong features for everyone else using that `ver`) and caches the
features by `ver`, bounded. PEP reads from them which nodes a client wants events for
(`NODE+notify`, XEP-0163 §4.3).
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict

from appliance.proto import ns
from appliance.proto.stanza import Element

CAPS = "http://jabber.org/protocol/caps"
NOTIFY = "+notify"
HASHES = {"sha-1": hashlib.sha1, "sha-256": hashlib.sha256}   # IANA names, as in the 'hash' attribute
_X = f"{{{ns.DATA_FORMS}}}x"
_FIELD = f"{{{ns.DATA_FORMS}}}field"
_VALUE = f"{{{ns.DATA_FORMS}}}value"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def verification_string(query: Element) -> str:
    """§5.1: identities, features and extended forms of a disco#info answer, sorted, '<'-joined."""
    identities = sorted(f"{i.get('category', '')}/{i.get('type', '')}/{i.get(_XML_LANG, '')}/{i.get('name', '')}"
                        for i in query.iterfind(f"{{{ns.DISCO_INFO}}}identity"))
    features = sorted(f.get("var", "") for f in query.iterfind(f"{{{ns.DISCO_INFO}}}feature"))
    text = "".join(f"{s}<" for s in identities + features)
    forms = []
    for x in query.iterfind(_X):
        fields = {f.get("var", ""): sorted(v.text or "" for v in f.iterfind(_VALUE)) for f in x.iterfind(_FIELD)}
        form_type = fields.pop("FORM_TYPE", None)
        if form_type:  # a form without FORM_TYPE is ignored (§5.4)
            forms.append((form_type[0], "".join(f"{var}<" + "".join(f"{v}<" for v in fields[var])
                                                for var in sorted(fields))))
    return text + "".join(f"{form_type}<{rest}" for form_type, rest in sorted(forms))


def verified(query: Element, hash_name: str | None, ver: str) -> bool:
    """Whether `query` is what `ver` promises (False for a legacy or unknown hash: never shared)."""
    algorithm = HASHES.get(hash_name or "")
    if algorithm is None:
        return False
    digest = algorithm(verification_string(query).encode()).digest()
    return base64.b64encode(digest).decode() == ver


def notify_nodes(query: Element) -> frozenset[str]:
    """The nodes a disco#info answer asks events for (`N+notify` features)."""
    features = (f.get("var", "") for f in query.iterfind(f"{{{ns.DISCO_INFO}}}feature"))
    return frozenset(var[:-len(NOTIFY)] for var in features if var.endswith(NOTIFY) and len(var) > len(NOTIFY))


class CapsCache:
    """Verified `ver` -> notify nodes, least recently used dropped beyond `size`."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._known: OrderedDict[str, frozenset[str]] = OrderedDict()

    def get(self, ver: str) -> frozenset[str] | None:
        nodes = self._known.get(ver)
        if nodes is not None:
            self._known.move_to_end(ver)
        return nodes

    def put(self, ver: str, nodes: frozenset[str]) -> None:
        self._known[ver] = nodes
        self._known.move_to_end(ver)
        while len(self._known) > self.size:
            self._known.popitem(last=False)
