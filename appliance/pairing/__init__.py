"""Pairing: invites (XEP-0401/0379/0445), their xmpp: URIs, QR codes and the TLS pin they carry."""
