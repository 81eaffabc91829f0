"""XEP-0198 with a real client library: slixmpp enables stream management, loses its link, resumes,
and gets what was sent meanwhile."""

from __future__ import annotations

import asyncio

from tests.harness import ServerProcess
from tests.slix import Client, run

PLUGINS = ("xep_0030", "xep_0199", "xep_0198")


def test_slixmpp_resumes_and_gets_what_was_sent_meanwhile(server: ServerProcess) -> None:
    phone_jid, friend_jid = server.add_user("slix_phone"), server.add_user("slix_friend")

    async def scenario() -> list[str]:
        phone = Client(server, f"{phone_jid}/phone", plugins=PLUGINS)
        enabled = asyncio.get_running_loop().create_future()
        resumed = asyncio.get_running_loop().create_future()
        phone.add_event_handler("sm_enabled", lambda _: enabled.done() or enabled.set_result(True))
        phone.add_event_handler("session_resumed", lambda _: resumed.done() or resumed.set_result(True))
        await phone.login()
        await asyncio.wait_for(enabled, 10)
        friend = Client(server, f"{friend_jid}/desk")
        await friend.login()

        friend.send_message(mto=f"{phone_jid}/phone", mbody="before", mtype="chat")
        assert (await phone.next_message())["body"] == "before"
        phone.transport.abort()  # the link dies under the client: no stream close
        await phone.disconnected
        for n in range(3):
            friend.send_message(mto=f"{phone_jid}/phone", mbody=f"while away {n}", mtype="chat")
        await asyncio.sleep(0.5)
        phone.connect("127.0.0.1", server.port)
        await asyncio.wait_for(resumed, 15)
        got = [(await phone.next_message())["body"] for _ in range(3)]
        await friend.logout()
        await phone.logout()
        return got

    assert run(scenario()) == ["while away 0", "while away 1", "while away 2"]
    assert server.logged("slix_phone@appliance.test/phone resumed")
