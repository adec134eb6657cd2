"""Per-session settings that persist across turns: persona, gender, style, seed."""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from datetime import datetime
from typing import Protocol

import msgspec

from bus.events import Persona
from bus.persona import Gender

__all__ = ["MemorySessionStore", "SessionSettings", "SessionStore", "new_session", "now_string"]


class SessionSettings(msgspec.Struct, kw_only=True, frozen=True):
    assistant_gender: Gender | None = None
    persona_style: str = "wholesome"
    user_identity: str = "non-binary"
    persona_text: str | None = None
    # Fixed for the session's life, like the original server's "seed" and "now".
    seed: int = 0
    now: str = ""

    def persona(self) -> Persona:
        return Persona(
            assistant_gender=self.assistant_gender or "woman",
            persona_style=self.persona_style,
            user_identity=self.user_identity,  # type: ignore[arg-type]
            persona_text=self.persona_text,
            now=self.now,
        )


class SessionStore(Protocol):
    async def get(self, session_id: str) -> SessionSettings | None: ...

    async def put(self, session_id: str, settings: SessionSettings) -> None: ...


class MemorySessionStore:
    """An LRU with a TTL, so an edge never keeps every session it has seen forever."""

    def __init__(self, *, ttl_s: float, max_sessions: int) -> None:
        self._ttl_s = ttl_s
        self._max = max_sessions
        self._items: OrderedDict[str, tuple[float, SessionSettings]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, session_id: str) -> SessionSettings | None:
        item = self._items.get(session_id)
        if item is None:
            return None
        stamp, settings = item
        if time.monotonic() - stamp > self._ttl_s:
            del self._items[session_id]
            return None
        self._items.move_to_end(session_id)
        return settings

    async def put(self, session_id: str, settings: SessionSettings) -> None:
        self._items[session_id] = (time.monotonic(), settings)
        self._items.move_to_end(session_id)
        while len(self._items) > self._max:
            self._items.popitem(last=False)


def now_string(moment: datetime) -> str:
    """The original server's session clock: ``25/11/2026 Wednesday 09:41 AM (morning)``."""
    hour = moment.hour
    if 5 <= hour < 12:
        part = "morning"
    elif 12 <= hour < 17:
        part = "afternoon"
    elif 17 <= hour < 21:
        part = "evening"
    else:
        part = "night"
    return moment.strftime(f"%d/%m/%Y %A %I:%M %p ({part})")


def new_session(rng: random.Random, moment: datetime) -> SessionSettings:
    return SessionSettings(seed=rng.randint(1, 1_000_000), now=now_string(moment))
