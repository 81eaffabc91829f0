"""Pairing the client library through invite URIs (appliance/client/pairing.py) with the real server:
invites made by `appliance invite create`, TLS pinned to the URI's fingerprint, XEP-0445 token,
XEP-0077 registration, XEP-0379 contact invites."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from appliance.client.pairing import PairingFailed, login, pair
from appliance.client.state import ClientState, roster_items
from appliance.client.stream import Account, PinMismatch
from appliance.pairing.invites import parse_uri
from appliance.proto import ns
from appliance.proto.stanza import make, sub
from tests.harness import PASSWORD, ServerProcess, free_port


def invite(server: ServerProcess, *options: str) -> str:
    result = server.cli("invite", "create", "--json", *options)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["uri"]


async def do_pair(server: ServerProcess, uri: str, data: Path, **options: object) -> Account:
    return await pair(uri, ClientState(data), host=server.host, port=server.port, timeout=10, **options)


async def roster_of(account: Account) -> dict[str, str]:
    stream = await login(account, timeout=10)
    query = make("iq", type_="get")
    sub(query, f"{{{ns.ROSTER}}}query")
    result = await stream.iq(query, timeout=10)
    await stream.aclose()
    return {item.jid: item.subscription for item in roster_items(result.find(f"{{{ns.ROSTER}}}query"))}


async def test_account_invite_pairs_pinned_and_logs_in_again(server: ServerProcess, tmp_path: Path) -> None:
    uri = invite(server)
    account = await do_pair(server, uri, tmp_path / "phone", username="mona")
    assert account.jid == f"mona@{server.domain}" and account.fingerprint == parse_uri(uri).fingerprint
    assert len(account.password) >= 32 and account.password != PASSWORD
    stored = ClientState(tmp_path / "phone").load_account()
    assert stored == account
    stream = await login(stored, timeout=10)  # pinned: no cafile needed
    assert stream.jid.startswith(f"mona@{server.domain}/")
    await stream.aclose()
    with pytest.raises(PairingFailed, match="used up"):  # single use
        await do_pair(server, uri, tmp_path / "other", username="mona2")
    assert ClientState(tmp_path / "other").load_account() is None


async def test_preset_username_is_used(server: ServerProcess, tmp_path: Path) -> None:
    account = await do_pair(server, invite(server, "--username", "Nina"), tmp_path / "c")
    assert account.jid == f"nina@{server.domain}"
    other = await do_pair(server, invite(server, "--username", "Olga"), tmp_path / "d")
    # every paired device binds its own resource (two devices of one account must not collide)
    assert account.resource != other.resource and account.resource.startswith("appliance-client-")


async def test_an_invite_without_username_asks_for_one(server: ServerProcess, tmp_path: Path) -> None:
    uri = invite(server)
    with pytest.raises(PairingFailed, match="give one"):
        await do_pair(server, uri, tmp_path / "c")


async def test_taken_username_is_refused_and_the_invite_stays_usable(server: ServerProcess, tmp_path: Path) -> None:
    server.add_user("otto")
    uri = invite(server)
    with pytest.raises(PairingFailed, match="username.*taken"):
        await do_pair(server, uri, tmp_path / "c", username="otto")
    assert (await do_pair(server, uri, tmp_path / "c", username="otto2")).jid.startswith("otto2@")


async def test_revoked_and_expired_invites_are_refused(server: ServerProcess, tmp_path: Path) -> None:
    revoked = invite(server)
    assert server.cli("invite", "revoke", parse_uri(revoked).token).returncode == 0
    with pytest.raises(PairingFailed, match="revoked"):
        await do_pair(server, revoked, tmp_path / "a", username="pam")
    expired = invite(server, "--expires", "1s")
    time.sleep(1.2)
    with pytest.raises(PairingFailed, match="expired"):
        await do_pair(server, expired, tmp_path / "b", username="pam")


async def test_wrong_pin_sends_nothing_and_leaves_the_invite_unused(server: ServerProcess, tmp_path: Path) -> None:
    uri = invite(server)
    pin = parse_uri(uri).fingerprint
    wrong = uri.replace(pin, pin[:10] + ("0" if pin[10] != "0" else "1") + pin[11:])
    with pytest.raises(PairingFailed, match="not the server that made the invite") as failed:
        await do_pair(server, wrong, tmp_path / "c", username="quin")
    assert isinstance(failed.value.__cause__, PinMismatch)
    assert ClientState(tmp_path / "c").load_account() is None
    token = parse_uri(uri).token
    assert f"invite {token[:4]}" not in server.log_text()  # the token never reached the server
    assert (await do_pair(server, uri, tmp_path / "c", username="quin")).jid.startswith("quin@")


async def test_unreachable_server(tmp_path: Path) -> None:
    uri = "xmpp:nowhere.test?register;preauth=abcdefghijklmnopqrstuvwx"
    with pytest.raises(PairingFailed, match="Cannot reach"):
        await pair(uri, ClientState(tmp_path), host="127.0.0.1", port=free_port(), username="x", timeout=10)


async def test_contact_invite_for_a_new_device_makes_both_contacts(server: ServerProcess, tmp_path: Path) -> None:
    server.add_user("rita")
    rita = Account(f"rita@{server.domain}", PASSWORD, server.host, server.port,
                   parse_uri(invite(server)).fingerprint)
    uri = invite(server, "--contact", "rita")
    sam = await do_pair(server, uri, tmp_path / "sam", username="sam")
    assert (await roster_of(sam))[rita.jid] == "both"
    assert (await roster_of(rita))[sam.jid] == "both"


async def test_contact_invite_for_an_existing_account_subscribes_with_the_token(
        server: ServerProcess, tmp_path: Path) -> None:
    server.add_user("tess")
    server.add_user("uma")
    pin = parse_uri(invite(server)).fingerprint
    tess = Account(f"tess@{server.domain}", PASSWORD, server.host, server.port, pin)
    uma = Account(f"uma@{server.domain}", PASSWORD, server.host, server.port, pin)
    state = ClientState(tmp_path / "uma")
    state.save_account(uma)
    assert await pair(invite(server, "--contact", "tess"), state, timeout=10) == uma
    assert (await roster_of(uma))[tess.jid] == "both"
    assert (await roster_of(tess))[uma.jid] == "both"
    assert server.logged(f"{uma.jid} used contact invite")


async def test_a_device_with_an_account_refuses_a_second_one(server: ServerProcess, tmp_path: Path) -> None:
    state = ClientState(tmp_path / "c")
    state.save_account(Account(f"vic@{server.domain}", PASSWORD, server.host, server.port, None))
    with pytest.raises(PairingFailed, match="already has the account"):
        await pair(invite(server), state, host=server.host, port=server.port, username="vic2", timeout=10)
    state.save_account(Account("vic@elsewhere.test", PASSWORD, server.host, server.port, None))
    server.add_user("wes")
    with pytest.raises(PairingFailed, match="another server"):
        await pair(invite(server, "--contact", "wes"), state, timeout=10)


@pytest.mark.parametrize("uri, sentence", [
    ("https://chat.local/invite/abc", "not an invite link"),
    ("xmpp:chat.local?message;body=hi", "carries no invite token"),
    ("xmpp:chat.local?roster;preauth=abc", "names no inviter"),
    ("xmpp:chat'local?register;preauth=abc", "no valid server"),
    ("xmpp:chat.local?register;preauth=abc;tls-sha256=12ab", "fingerprint .* is damaged"),
])
async def test_links_that_are_no_usable_invites(tmp_path: Path, uri: str, sentence: str) -> None:
    with pytest.raises(PairingFailed, match=sentence):
        await pair(uri, ClientState(tmp_path), host="127.0.0.1", port=free_port(), username="x", timeout=5)
