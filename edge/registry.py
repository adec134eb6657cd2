"""Which actors are alive, from their heartbeats on the bus."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bus.events import ActorKind, Heartbeat

__all__ = ["ActorRegistry", "ActorStatus"]


@dataclass(slots=True)
class ActorStatus:
    heartbeat: Heartbeat
    seen_at: float


class ActorRegistry:
    """Tracks the last heartbeat of every actor; an actor silent too long is lost."""

    def __init__(self, *, lost_after_s: float) -> None:
        self._lost_after_s = lost_after_s
        self._actors: dict[str, ActorStatus] = {}
        self.heard = asyncio.Event()  # set on every heartbeat; waiters clear it

    def observe(self, heartbeat: Heartbeat, now: float | None = None) -> bool:
        """Record a heartbeat; True when it comes from a new instance of a known actor
        (the actor restarted: what the old instance held is gone)."""
        previous = self._actors.get(heartbeat.actor_id)
        self._actors[heartbeat.actor_id] = ActorStatus(
            heartbeat, time.monotonic() if now is None else now
        )
        self.heard.set()
        return (
            previous is not None
            and bool(previous.heartbeat.instance)
            and previous.heartbeat.instance != heartbeat.instance
        )

    def is_alive(self, actor_id: str, now: float | None = None) -> bool:
        status = self._actors.get(actor_id)
        if status is None:
            # Not heard from yet: it answered our request moments ago, so it is alive
            # until it misses heartbeats like any other.
            return True
        now = time.monotonic() if now is None else now
        return self._fresh(status, now)

    def live(self, kind: ActorKind, now: float | None = None) -> list[ActorStatus]:
        now = time.monotonic() if now is None else now
        self.prune(now)
        return [
            s
            for s in self._actors.values()
            if s.heartbeat.kind == kind
            and s.heartbeat.ready
            and not s.heartbeat.draining
            and self._fresh(s, now)
        ]

    def _fresh(self, status: ActorStatus, now: float) -> bool:
        allowed = max(self._lost_after_s, 3 * status.heartbeat.interval_s)
        return now - status.seen_at <= allowed

    def prune(self, now: float) -> None:
        """Forget actors silent for much longer than the loss threshold."""
        stale = [
            actor_id
            for actor_id, s in self._actors.items()
            if now - s.seen_at > 10 * self._lost_after_s
        ]
        for actor_id in stale:
            del self._actors[actor_id]

    def snapshot(self) -> list[ActorStatus]:
        return list(self._actors.values())
