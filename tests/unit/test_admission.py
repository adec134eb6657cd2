"""The admission queue: bounded, oldest first, with a deadline; no sockets."""

from __future__ import annotations

import asyncio

from edge.admission import Admission
from edge.routing import AllFull, Placement, ToActor


class Room:
    """A fake actor pool with ``free`` places; placing takes one."""

    def __init__(self, free: int = 0) -> None:
        self.free = free
        self.undone: list[Placement] = []

    def place(self) -> Placement:
        if self.free <= 0:
            return AllFull()
        self.free -= 1
        return ToActor("chat-0")

    def unplace(self, placement: Placement) -> None:
        self.undone.append(placement)
        self.free += 1


def _later(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def _queued(admission: Admission, count: int) -> None:
    """Wait until ``count`` legs wait for chat."""
    async with asyncio.timeout(1.0):
        while admission.waiting("chat") < count:
            admission.joined.clear()
            await admission.joined.wait()


async def test_room_now_places_at_once() -> None:
    """With room, a leg is placed without waiting or queueing."""
    admission, room = Admission(max_waiting=4, wait_s=1.0), Room(free=1)
    placement = await admission.admit("chat", room.place, room.unplace, _later(1.0))
    assert placement == ToActor("chat-0") and room.free == 0
    assert admission.waiting("chat") == 0


async def test_waiters_are_placed_oldest_first_as_room_appears() -> None:
    """Each wake with one free place admits exactly the oldest waiter."""
    admission, room = Admission(max_waiting=4, wait_s=5.0), Room()
    order: list[int] = []
    admitted = [asyncio.Event() for _ in range(3)]

    async def leg(n: int) -> None:
        await admission.admit("chat", room.place, room.unplace, _later(5.0))
        order.append(n)
        admitted[n].set()

    async with asyncio.TaskGroup() as group:
        for n in range(3):
            group.create_task(leg(n))
            await _queued(admission, n + 1)
        for expected in range(1, 4):
            room.free += 1
            admission.wake("chat")
            async with asyncio.timeout(1.0):
                await admitted[expected - 1].wait()
            assert len(order) == expected and admission.waiting("chat") == 3 - expected
    assert order == [0, 1, 2]


async def test_a_full_queue_refuses_at_once() -> None:
    """Past max_waiting, a leg is refused without waiting."""
    admission, room = Admission(max_waiting=1, wait_s=5.0), Room()
    first = asyncio.create_task(admission.admit("chat", room.place, room.unplace, _later(5.0)))
    await _queued(admission, 1)
    async with asyncio.timeout(0.5):
        assert await admission.admit("chat", room.place, room.unplace, _later(5.0)) == AllFull()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert admission.waiting("chat") == 0


async def test_the_deadline_refuses_a_waiter() -> None:
    """A waiter that gets no room by its deadline is refused and leaves the queue."""
    admission, room = Admission(max_waiting=4, wait_s=0.05), Room()
    async with asyncio.timeout(1.0):
        assert await admission.admit("chat", room.place, room.unplace, _later(0.05)) == AllFull()
    assert admission.waiting("chat") == 0


async def test_a_cancelled_waiter_leaves_and_gives_back_its_place() -> None:
    """A waiter cancelled after a wake placed it undoes the placement; one cancelled
    while still waiting just leaves, and the next waiter gets the room."""
    admission, room = Admission(max_waiting=4, wait_s=5.0), Room()
    placed = asyncio.create_task(admission.admit("chat", room.place, room.unplace, _later(5.0)))
    await _queued(admission, 1)
    room.free = 1
    admission.wake("chat")  # placed, but its task has not run since
    placed.cancel()
    await asyncio.gather(placed, return_exceptions=True)
    assert room.undone == [ToActor("chat-0")] and room.free == 1

    room.free = 0
    leaving = asyncio.create_task(admission.admit("chat", room.place, room.unplace, _later(5.0)))
    staying = asyncio.create_task(admission.admit("chat", room.place, room.unplace, _later(5.0)))
    await _queued(admission, 2)
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert admission.waiting("chat") == 1
    room.free = 1
    admission.wake("chat")
    async with asyncio.timeout(1.0):
        assert await staying == ToActor("chat-0")


async def test_a_new_leg_does_not_jump_the_queue() -> None:
    """While others wait, a new leg queues behind them even if a place just opened:
    the wake it triggers goes to the oldest."""
    admission, room = Admission(max_waiting=4, wait_s=5.0), Room()
    old = asyncio.create_task(admission.admit("chat", room.place, room.unplace, _later(5.0)))
    await _queued(admission, 1)
    room.free = 1  # no wake yet
    new = asyncio.create_task(admission.admit("chat", room.place, room.unplace, _later(0.05)))
    async with asyncio.timeout(1.0):
        assert await old == ToActor("chat-0")
        assert await new == AllFull()


async def test_wait_queues_a_leg_that_could_be_placed() -> None:
    """``wait`` holds a leg until the next wake, even with room."""
    admission, room = Admission(max_waiting=4, wait_s=5.0), Room(free=1)
    task = asyncio.create_task(
        admission.admit("chat", room.place, room.unplace, _later(5.0), wait=True)
    )
    await _queued(admission, 1)
    assert room.free == 1
    admission.wake("chat")
    async with asyncio.timeout(1.0):
        assert await task == ToActor("chat-0")


async def test_kinds_queue_apart() -> None:
    """A waiting chat leg does not hold up a tool leg."""
    admission, full, free = Admission(max_waiting=4, wait_s=5.0), Room(), Room(free=1)
    chat = asyncio.create_task(admission.admit("chat", full.place, full.unplace, _later(5.0)))
    await _queued(admission, 1)
    async with asyncio.timeout(0.5):
        assert await admission.admit("tool", free.place, free.unplace, _later(5.0)) == ToActor(
            "chat-0"
        )
    chat.cancel()
    await asyncio.gather(chat, return_exceptions=True)
