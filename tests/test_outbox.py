"""The bound connection's outbox (appliance/net/c2s.py): bounded, ordered, and waited on only by
put_wait; a writer task runs only while it holds something (covered by every server test)."""

import trio
import trio.testing

from appliance.net.c2s import _Outbox


def test_bounded_and_in_order():
    box = _Outbox(3)
    assert all(box.put(item) for item in (b"a", b"b", b"c"))
    assert not box.put(b"d")  # full: the caller treats the reader as too slow
    assert box.take(2) == [b"a", b"b"]
    assert box.put(b"d")
    assert box.take(10) == [b"c", b"d"] and box.take(10) == []


def test_put_wait_waits_for_room_and_gives_up_when_closed():
    async def main():
        box = _Outbox(1)
        box.put(b"first")
        done = []

        async def waiter(item):
            done.append((item, await box.put_wait(item)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, b"second")
            await trio.testing.wait_all_tasks_blocked()
            assert done == []  # still full
            assert box.take(1) == [b"first"]
            await trio.testing.wait_all_tasks_blocked()
            assert done == [(b"second", True)] and box.items == [b"second"]
            nursery.start_soon(waiter, b"third")
            await trio.testing.wait_all_tasks_blocked()
            box.close()
        assert done[-1] == (b"third", False)
        assert box.take(5) == [b"second"]  # what was put before the close can still be taken
        assert not box.put(b"late")

    trio.run(main)
