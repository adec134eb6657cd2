"""Publishes one actor's events for one turn, numbering them."""

from __future__ import annotations

import time

from nats.aio.client import Client as NatsClient

from bus import subjects
from bus.codec import Codec
from bus.events import ActorKind, Done, DoneReason, Error, Token, ToolCall, ToolCallSpec

__all__ = ["TurnEmitter"]


class TurnEmitter:
    """Subjects are built once per turn; ``seq`` rises by one per event."""

    def __init__(
        self, nc: NatsClient, codec: Codec, kind: ActorKind, session_id: str, turn_id: str
    ) -> None:
        self._nc = nc
        self._encode = codec.encode
        self._kind = kind
        self.session_id = session_id
        self.turn_id = turn_id
        self._seq = 0
        self._token_subject = subjects.out(session_id, "token")
        self.finished = False
        self.tokens_sent = 0
        self.first_event_at: float | None = None  # the leg's first toolcall or token

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    async def token(self, text: str) -> None:
        self.tokens_sent += 1
        if self.first_event_at is None:
            self.first_event_at = time.monotonic()
        event = Token(self.session_id, self.turn_id, self._next(), text)
        await self._nc.publish(self._token_subject, self._encode(event))

    async def toolcall(self, status: str, raw: str, calls: tuple[ToolCallSpec, ...]) -> None:
        if self.first_event_at is None:
            self.first_event_at = time.monotonic()
        event = ToolCall(self.session_id, self.turn_id, self._next(), status, raw, calls)  # type: ignore[arg-type]
        await self._nc.publish(subjects.out(self.session_id, "toolcall"), self._encode(event))

    async def error(self, code: str, message: str) -> None:
        event = Error(self.session_id, self.turn_id, self._next(), self._kind, code, message)
        await self._nc.publish(subjects.out(self.session_id, "error"), self._encode(event))

    async def done(
        self,
        reason: DoneReason,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_tokens: int = 0,
    ) -> None:
        """The leg's last event; a second call is ignored so there is exactly one."""
        if self.finished:
            return
        self.finished = True
        event = Done(
            self.session_id,
            self.turn_id,
            self._next(),
            self._kind,
            reason,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
        )
        await self._nc.publish(subjects.out(self.session_id, "done"), self._encode(event))
