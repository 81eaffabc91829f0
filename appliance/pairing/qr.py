"""QR codes of invite URIs (segno): PNG and SVG for the web page, text for a terminal or console.

The QR holds the xmpp: URI itself, so a stock client needs no HTTPS fetch to act on it. Error
correction M, like most phone-scanned codes: readable off a slightly dirty screen or print-out
without making the symbol much denser.
"""

from __future__ import annotations

import io

import segno

ERROR_CORRECTION = "m"
PNG_SCALE = 8        # pixels per module: about 300-400 px for an invite, sharp on a phone screen
BORDER = 4           # the quiet zone the QR standard asks for


def _code(data: str) -> segno.QRCode:
    return segno.make_qr(data, error=ERROR_CORRECTION, boost_error=False)


def png(data: str, scale: int = PNG_SCALE) -> bytes:
    out = io.BytesIO()
    _code(data).save(out, kind="png", scale=scale, border=BORDER)
    return out.getvalue()


def svg(data: str) -> bytes:
    out = io.BytesIO()
    _code(data).save(out, kind="svg", scale=4, border=BORDER, xmldecl=False, svgns=True,
                     title="Invite QR code")
    return out.getvalue()


def terminal(data: str) -> str:
    """Half-block rendering (two modules per character row), dark modules on a light background,
    with the quiet zone: scannable off a terminal or the box's console."""
    out = io.StringIO()
    _code(data).terminal(out=out, compact=True, border=BORDER)
    return out.getvalue()
