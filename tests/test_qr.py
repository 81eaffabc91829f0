"""pairing/qr.py read back by zbarimg: the PNG and the terminal rendering give exactly the URI."""

from __future__ import annotations

import pytest
from lxml import etree

from appliance.pairing import qr
from appliance.pairing.invites import ACCOUNT, CONTACT, invite_uri, new_invite, parse_uri
from tests.zbar import decode, decode_terminal, needs_zbarimg

PIN = "AB:" * 31 + "CD"
NOW = 1_800_000_000.0


# Fixed ids: the tokens are random, and pytest-xdist workers must collect the same test names.
URI_IDS = ["account", "preset-username", "contact", "ip-domain-no-pin"]


def uris() -> list[str]:
    return [
        invite_uri(new_invite(ACCOUNT, inviter=None, now=NOW), "box.local", PIN),
        invite_uri(new_invite(ACCOUNT, inviter=None, now=NOW, username="zoë o'neil"), "box.local", PIN),
        invite_uri(new_invite(CONTACT, inviter="alice", now=NOW), "chat.example.org", PIN),
        invite_uri(new_invite(ACCOUNT, inviter=None, now=NOW, max_uses=0, ttl=None), "10.0.0.7", None),
    ]


@needs_zbarimg
@pytest.mark.parametrize("uri", uris(), ids=URI_IDS)
def test_png_round_trip(tmp_path, uri):
    image = tmp_path / "invite.png"
    image.write_bytes(qr.png(uri))
    assert decode(image) == uri


@needs_zbarimg
@pytest.mark.parametrize("uri", uris(), ids=URI_IDS)
def test_terminal_round_trip(tmp_path, uri):
    assert decode_terminal(qr.terminal(uri), tmp_path) == uri


def test_percent_encoded_username_survives():
    uri = uris()[1]
    assert "zo%C3%AB" in uri and parse_uri(uri).jid == "zoë o'neil@box.local"


def test_svg_is_an_svg_image_of_the_code():
    svg = etree.fromstring(qr.svg(uris()[0]))
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert svg.findtext("{http://www.w3.org/2000/svg}title") == "Invite QR code"
    # segno draws the dark modules as one path; an empty code would have none.
    path = svg.find("{http://www.w3.org/2000/svg}path")
    assert path is not None and len(path.get("d")) > 100
