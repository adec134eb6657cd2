"""Per-session settings that persist across turns: persona, gender, style, seed, and the
server-kept history of the sessions that ask for one.

One entry per session, a JSON object in the JetStream key-value bucket, so another
edge (or this one, restarted) picks the session up where it was. A value must fit
in one NATS message (nats-server's ``max_payload``, 1 MiB by default); the store
drops the oldest history lines of an entry that would not (``fit_entry``).
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from datetime import datetime
from typing import Final, Protocol

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from bus.events import Persona
from bus.history import cap_history
from bus.persona import Gender

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "KvSessionStore",
    "MemorySessionStore",
    "SessionSettings",
    "SessionStore",
    "fit_entry",
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
    # The server-kept history (canonical, bus.history), capped; "" for sessions whose
    # clients keep their own. Last, with a default: entries written before it decode.
    history: str = ""

    def persona(self) -> Persona:
        return Persona(
            assistant_gender=self.assistant_gender or "woman",
            persona_style=self.persona_style,
            user_identity=self.user_identity,  # type: ignore[arg-type]
            persona_text=self.persona_text,
            now=self.now,
        )


# nats-server's default max_payload: the largest message, so the largest value.
DEFAULT_MAX_VALUE_BYTES: Final = 1024 * 1024


def fit_entry(
    settings: SessionSettings, encoder: msgspec.json.Encoder, max_bytes: int
) -> tuple[SessionSettings, bytes]:
    """``settings`` and their encoding, with history lines dropped until it fits.

    The history's cap (``edge.server_history_max_chars``) keeps an entry far below
    the limit; this is the backstop for what the cap counts in characters: JSON
    writes a control character as six bytes and some characters take four. Whole
    lines go, oldest first (``cap_history``). An entry over the limit with no
    history left comes back as it is, and its write fails as any bus failure does.
    """
    payload = encoder.encode(settings)
    while len(payload) > max_bytes and settings.history:
        # Shrink the history by how far the entry is over; the cap strictly decreases.
        cap = len(settings.history) * max_bytes // len(payload)
        settings = msgspec.structs.replace(settings, history=cap_history(settings.history, cap))
        payload = encoder.encode(settings)
    return settings, payload


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

    def __init__(
        self,
        kv: KeyValue,
        fallback: MemorySessionStore,
        log: logging.Logger,
        *,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        self._kv = kv
        self._fallback = fallback
        self._log = log
        self._max_value_bytes = max_value_bytes
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
        fitted, payload = fit_entry(settings, self._encoder, self._max_value_bytes)
        if fitted is not settings:
            self._log.warning(
                "session %s: history cut to %d characters to fit one bus message",
                session_id,
                len(fitted.history),
            )
        await self._fallback.put(session_id, fitted)
        try:
            await self._kv.put(session_id, payload)
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
