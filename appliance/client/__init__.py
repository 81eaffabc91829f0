"""The appliance's own XMPP client, a library on Trio (docs/client.md): one connection
(stream.py), its local state in SQLite (state.py), pairing through an invite URI (pairing.py).

A separate program that ships in the same package: it imports appliance.proto and
appliance.pairing.invites, never the server's core, features, store or net."""
