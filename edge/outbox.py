"""Frames waiting to be written to one client, with token deltas merged.

When the client reads slower than the actors write, consecutive token deltas are
merged into one frame instead of queueing: the backlog is bounded by the number of
non-token frames of a turn, a handful.
"""

from __future__ import annotations

import asyncio
from collections import deque

from edge import frames

__all__ = ["Outbox"]


class Outbox:
    def __init__(self) -> None:
        self._items: deque[frames.Frame | list[str]] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def push(self, frame: frames.Frame) -> None:
        self._items.append(frame)
        self._ready.set()

    def push_token(self, text: str) -> None:
        if not text:
            return
        tail = self._items[-1] if self._items else None
        if isinstance(tail, list):
            tail.append(text)
        else:
            self._items.append([text])
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self, flush_delay_s: float = 0.0) -> frames.Frame | None:
        """The next frame to send, or None once closed and empty.

        ``flush_delay_s`` (the seed's ``STREAM_FLUSH_MS``) lets a token frame wait that
        long for more deltas to merge, trading latency for fewer packets.
        """
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if flush_delay_s > 0 and isinstance(self._items[0], list):
            await asyncio.sleep(flush_delay_s)
        item = self._items.popleft()
        if isinstance(item, list):
            return frames.token("".join(item))
        return item
