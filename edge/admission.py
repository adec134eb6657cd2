"""Turns that found every actor of their kind full wait here: bounded, in order, with a
deadline.

A leg that cannot be placed (``edge.routing.AllFull``) joins its kind's queue, at
most ``max_waiting`` deep; past that, or past its deadline, the caller tells the
client ``server_at_capacity``. ``wake(kind)`` is called whenever an actor of the
kind may have room (a heartbeat, a leg's ``Done``, an undone placement) and
places waiting legs, oldest first, until one finds every actor full again: every
waiter can go to any actor with room, so the first that cannot be placed means
none behind it can be either. A waiter whose task is cancelled (a barge-in, a
cancel, a disconnect) leaves the queue on the way out.

No sockets here: ``place`` is the policy with the edge's book (``LegClient``), and
time is the loop's (``loop.time()`` deadlines).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bus.events import ActorKind
from edge.routing import AllFull, Placement

__all__ = ["Admission"]

Place = Callable[[], Placement]
Unplace = Callable[[Placement], None]


@dataclass(eq=False, slots=True)
class _Waiter:
    place: Place
    future: asyncio.Future[Placement]


class Admission:
    def __init__(self, *, max_waiting: int, wait_s: float) -> None:
        self.max_waiting = max_waiting
        self.wait_s = wait_s
        self._queues: dict[ActorKind, deque[_Waiter]] = {"tool": deque(), "chat": deque()}
        self.joined = asyncio.Event()  # set whenever a leg starts waiting; waiters clear it

    def waiting(self, kind: ActorKind) -> int:
        return sum(1 for waiter in self._queues[kind] if not waiter.future.done())

    async def admit(
        self,
        kind: ActorKind,
        place: Place,
        unplace: Unplace,
        deadline: float,
        *,
        wait: bool = False,
    ) -> Placement:
        """Place a leg now, or once an actor has room; ``AllFull`` when the queue is
        full or ``deadline`` (loop time) passes first.

        ``place`` records what it places (the edge's book); ``unplace`` undoes a
        placement made for a waiter that was cancelled before it could use it.
        ``wait`` queues the leg even if it could be placed now: a blind placement
        (no heartbeat known) was just refused, and the next try waits for news.
        """
        queue = self._queues[kind]
        self.wake(kind)  # whoever is ahead goes first, if there is room for them
        if not queue and not wait:
            placement = place()
            if not isinstance(placement, AllFull):
                return placement
        if len(queue) >= self.max_waiting:
            return AllFull()
        waiter = _Waiter(place, asyncio.get_running_loop().create_future())
        queue.append(waiter)
        self.joined.set()
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter.future
        except TimeoutError:
            # Placed by a wake in the same instant the deadline fired: take it.
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()
            return AllFull()
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                unplace(waiter.future.result())
            raise
        finally:
            if waiter in queue:
                queue.remove(waiter)

    def wake(self, kind: ActorKind) -> None:
        """An actor of ``kind`` may have room: place waiters, oldest first."""
        queue = self._queues[kind]
        while queue:
            waiter = queue[0]
            if waiter.future.done():  # cancelled, on its way out
                queue.popleft()
                continue
            placement = waiter.place()
            if isinstance(placement, AllFull):
                return
            queue.popleft()
            waiter.future.set_result(placement)
