"""Sans-I/O XMPP: parsing, stanzas, JIDs, SASL and stream negotiation. Imports no trio, socket, ssl or sqlite3."""
