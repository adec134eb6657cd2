"""The requests an in-process engine (fake, bench) is running.

Each request has an abort event; an idle event is set whenever none runs, so tests
and benchmarks wait on it instead of polling ``running()``.
"""

from __future__ import annotations

import asyncio

from actors.engines.base import EngineRequestError

__all__ = ["InFlight"]


class InFlight:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._events)

    def ids(self) -> list[str]:
        return list(self._events)

    def get(self, request_id: str) -> asyncio.Event | None:
        return self._events.get(request_id)

    def add(self, request_id: str) -> asyncio.Event:
        """Register ``request_id`` and return its abort event.

        Raises:
            EngineRequestError: ``request_id`` is already running.
        """
        if request_id in self._events:
            raise EngineRequestError(f"request id {request_id!r} is already running")
        event = self._events[request_id] = asyncio.Event()
        self._idle.clear()
        return event

    def release(self, request_id: str, event: asyncio.Event) -> None:
        # Only our own entry: a finished stream closed late must not drop a newer
        # request that reuses its id.
        if self._events.get(request_id) is event:
            del self._events[request_id]
        if not self._events:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is running (callers bound it with a timeout)."""
        await self._idle.wait()
