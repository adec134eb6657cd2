"""Publishes one actor's events for one turn, numbering them.

The events go to the subjects of the edge that serves the turn's connection
(``Start.edge_id``), with this actor's id as the sender.

Token deltas that a turn produces while its previous ``Token`` has not been
flushed yet are merged into one event (as vLLM's ``RequestOutputCollector`` merges
deltas for a consumer that lags). "Not flushed yet" is "published in this pass of
the event loop": nats-py writes its buffer once per pass (its flusher task runs
after the publishes that woke it), so a second delta of the same pass would have
left in the same write anyway. At low load a turn makes one delta per pass and
every delta is published at once: merging adds no latency there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient

from actors.engines.base import EngineOutput, EngineStamps
from bus import subjects
from bus.codec import Codec
from bus.events import (
    ActorKind,
    Done,
    DoneReason,
    Error,
    LegTiming,
    Token,
    ToolCall,
    ToolCallSpec,
)

__all__ = ["LegClock", "Spawn", "TurnEmitter"]

# Runs a coroutine in the owner's TaskGroup (the actor service's background tasks).
Spawn = Callable[[Coroutine[Any, Any, None]], None]


@dataclass(slots=True)
class LegClock:
    """One leg's stamps as they happen (``time.monotonic()``), sent in its ``Done``."""

    received: float = 0.0
    submitted: float = 0.0
    first_output: float = 0.0
    engine: EngineStamps | None = None

    def submit(self) -> None:
        """The prompt goes to the engine now."""
        self.submitted = time.monotonic()

    def output(self, output: EngineOutput) -> None:
        """An engine output arrived; the first one is stamped, with the engine's stamps."""
        if not self.first_output:
            self.first_output = time.monotonic()
            self.engine = output.stamps

    def timing(self, first_event: float | None) -> LegTiming:
        engine = self.engine or EngineStamps()
        return LegTiming(
            received=self.received,
            submitted=self.submitted,
            queued=engine.queued,
            scheduled=engine.scheduled,
            first_token=engine.first_token,
            first_output=self.first_output,
            first_event=first_event or 0.0,
        )


class TurnEmitter:
    """Subjects are built once per turn; ``seq`` rises by one per event.

    Args:
        spawn: where a merged delta's publish runs when the loop pass that held it
            ends; None turns merging off (every delta is its own event).
    """

    def __init__(
        self,
        nc: NatsClient,
        codec: Codec,
        kind: ActorKind,
        session_id: str,
        turn_id: str,
        *,
        edge_id: str,
        actor_id: str,
        spawn: Spawn | None = None,
        received: float = 0.0,
    ) -> None:
        self._nc = nc
        self._encode = codec.encode
        self._kind = kind
        self.session_id = session_id
        self.turn_id = turn_id
        self._seq = 0
        self._token_subject = subjects.edge_out(edge_id, session_id, actor_id, "token")
        self._toolcall_subject = subjects.edge_out(edge_id, session_id, actor_id, "toolcall")
        self._error_subject = subjects.edge_out(edge_id, session_id, actor_id, "error")
        self._done_subject = subjects.edge_out(edge_id, session_id, actor_id, "done")
        self._spawn = spawn
        self._held: list[str] = []  # deltas waiting for this pass to end
        self._in_pass = False  # a Token of this turn went out in this loop pass
        self.finished = False
        self.tokens_sent = 0  # deltas, merged or not
        self.token_events = 0  # Token events published
        self.first_event_at: float | None = None  # the leg's first toolcall or token
        self.clock = LegClock(received=received)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    async def token(self, text: str) -> None:
        self.tokens_sent += 1
        if self.first_event_at is None:
            self.first_event_at = time.monotonic()
        if self._in_pass and self._spawn is not None:
            self._held.append(text)  # goes out merged when the pass ends (_settle)
            return
        await self._publish_token(text)

    async def toolcall(self, status: str, raw: str, calls: tuple[ToolCallSpec, ...]) -> None:
        if self.first_event_at is None:
            self.first_event_at = time.monotonic()
        await self._release()
        event = ToolCall(self.session_id, self.turn_id, self._next(), status, raw, calls)  # type: ignore[arg-type]
        await self._nc.publish(self._toolcall_subject, self._encode(event))

    async def error(self, code: str, message: str) -> None:
        await self._release()
        event = Error(self.session_id, self.turn_id, self._next(), self._kind, code, message)
        await self._nc.publish(self._error_subject, self._encode(event))

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
        await self._release()
        event = Done(
            self.session_id,
            self.turn_id,
            self._next(),
            self._kind,
            reason,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            self.clock.timing(self.first_event_at),
        )
        await self._nc.publish(self._done_subject, self._encode(event))

    async def _publish_token(self, text: str) -> None:
        # The seq is taken and the message buffered without a suspension in between,
        # so events leave in seq order whichever task publishes them.
        event = Token(self.session_id, self.turn_id, self._next(), text)
        self.token_events += 1
        await self._nc.publish(self._token_subject, self._encode(event))
        if self._spawn is not None and not self._in_pass:
            self._in_pass = True
            asyncio.get_running_loop().call_soon(self._settle)

    def _settle(self) -> None:
        """The pass that published our last Token is over: send what it held back."""
        if not self._held:
            self._in_pass = False
            return
        assert self._spawn is not None
        try:
            self._spawn(self._release())
        except RuntimeError:  # the service is stopping; done() releases what is held
            self._in_pass = False

    async def _release(self) -> None:
        """Publish the held deltas as one Token; a no-op when nothing is held."""
        self._in_pass = False
        if self._held:
            text = "".join(self._held)
            self._held.clear()
            await self._publish_token(text)
