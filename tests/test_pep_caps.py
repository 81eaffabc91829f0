"""XEP-0115 §5 verification strings and hashes (features/pep_caps.py), with the XEP's own examples."""

from __future__ import annotations

from lxml import etree

from appliance.features.pep_caps import CapsCache, notify_nodes, verification_string, verified

DISCO = "http://jabber.org/protocol/disco#info"

SIMPLE = f"""<query xmlns='{DISCO}'>
  <identity category='client' name='Exodus 0.9.1' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
</query>"""

# §5.3: two identities with xml:lang, an extended form whose fields are out of order.
COMPLEX = f"""<query xmlns='{DISCO}' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>
  <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
  <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
  <x xmlns='jabber:x:data' type='result'>
    <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
    <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>
    <field var='os'><value>Mac</value></field>
    <field var='os_version'><value>10.5.1</value></field>
    <field var='software'><value>Psi</value></field>
    <field var='software_version'><value>0.11</value></field>
  </x>
</query>"""


def test_simple_example() -> None:
    query = etree.fromstring(SIMPLE)
    assert verification_string(query) == (
        "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<http://jabber.org/protocol/disco#info<"
        "http://jabber.org/protocol/disco#items<http://jabber.org/protocol/muc<")
    assert verified(query, "sha-1", "QgayPKawpkPSDYmwT/WM94uAlu0=")


def test_complex_example_and_refusals() -> None:
    query = etree.fromstring(COMPLEX.encode())
    assert verified(query, "sha-1", "q07IKJEyjvHSyhy//CH0CxmKi8w=")
    assert not verified(query, "sha-1", "QgayPKawpkPSDYmwT/WM94uAlu0=")   # another client's ver
    assert not verified(query, None, "q07IKJEyjvHSyhy//CH0CxmKi8w=")       # legacy caps: never shared
    assert not verified(query, "md5", "q07IKJEyjvHSyhy//CH0CxmKi8w=")


def test_notify_nodes_and_cache_bound() -> None:
    query = etree.fromstring(f"<query xmlns='{DISCO}'><feature var='http://jabber.org/protocol/nick+notify'/>"
                             "<feature var='urn:x+notify'/><feature var='+notify'/><feature var='urn:y'/></query>")
    assert notify_nodes(query) == {"http://jabber.org/protocol/nick", "urn:x"}
    cache = CapsCache(size=2)
    cache.put("a", frozenset({"x"}))
    cache.put("b", frozenset())
    assert cache.get("a") == {"x"}       # used: "b" is now the oldest
    cache.put("c", frozenset())
    assert cache.get("b") is None and cache.get("a") == {"x"}
