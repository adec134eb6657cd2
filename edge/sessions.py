"""Per-session settings that persist across turns: persona, gender, style, seed."""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from datetime import datetime
from typing import Protocol

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from bus.events import Persona
from bus.persona import Gender

__all__ = [
    "KvSessionStore",
    "MemorySessionStore",
    "SessionSettings",
    "SessionStore",
    "new_session",
    "now_string",
]


class SessionSettings(msgspec.Struct, kw_only=True, frozen=True):
    assistant_gender: Gender | None = None
    persona_style: str = "wholesome"
    user_identity: str = "non-binary"
    persona_text: str | None = None
    # Fixed for the session's life, like the original server's "seed" and "now".
    seed: int = 0
    now: str = ""
    # The chat actor whose prefix cache holds this session (affinity routing).
    chat_actor: str | None = None

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


class KvSessionStore:
    """Settings in a JetStream key-value bucket whose TTL expires idle sessions.

    A session outlives its edge: after a restart, or on another edge, the next
    start finds its persona. While the bus is unreachable the store falls back to
    a local copy, so a turn never fails for want of settings.
    """

    def __init__(self, kv: KeyValue, fallback: MemorySessionStore, log: logging.Logger) -> None:
        self._kv = kv
        self._fallback = fallback
        self._log = log
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(SessionSettings)

    async def get(self, session_id: str) -> SessionSettings | None:
        try:
            entry = await self._kv.get(session_id)
        except KeyNotFoundError:
            return None
        except Exception as exc:  # any bus failure: use the local copy
            self._log.warning("session store unavailable (%r); using local copy", exc)
            return await self._fallback.get(session_id)
        try:
            return self._decoder.decode(entry.value or b"")
        except msgspec.DecodeError:
            self._log.warning("dropped unreadable settings of session %s", session_id)
            return None

    async def put(self, session_id: str, settings: SessionSettings) -> None:
        await self._fallback.put(session_id, settings)
        try:
            await self._kv.put(session_id, self._encoder.encode(settings))
        except Exception as exc:  # kept locally; the turn goes on
            self._log.warning("session store unavailable (%r); kept locally", exc)


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
