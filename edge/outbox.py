"""Frames waiting to be written to one client, with token deltas merged; no I/O.

When the client reads slower than the actors write, consecutive token deltas are
merged into one frame instead of queueing: the backlog is bounded by the number of
non-token frames of a turn, a handful. The connection decides when to write
(``take``); the outbox only keeps order and merges.
"""

from __future__ import annotations

from collections import deque

from edge import frames

__all__ = ["Outbox"]


class Outbox:
    def __init__(self) -> None:
        self._items: deque[frames.Frame | list[str]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, frame: frames.Frame) -> None:
        self._items.append(frame)

    def push_token(self, text: str) -> None:
        if not text:
            return
        tail = self._items[-1] if self._items else None
        if isinstance(tail, list):
            tail.append(text)
        else:
            self._items.append([text])

    def head_is_token(self) -> bool:
        return bool(self._items) and isinstance(self._items[0], list)

    def take(self) -> list[frames.Frame]:
        """Every frame waiting, in order; a run of deltas is one token frame."""
        taken = [
            frames.token("".join(item)) if isinstance(item, list) else item for item in self._items
        ]
        self._items.clear()
        return taken
