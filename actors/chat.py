"""ChatActor's worker: persona, history and utterance in, a streamed reply out.

The prompt goes to the engine as token ids built from cached units
(``actors.prompts.chat.ChatPrompts``): a session's persona and history lines are
encoded once, a turn encodes its utterance and the history's new lines.

Once a reply is done the worker knows most of the session's next prompt: the
canonical history (``bus.history``) of the next turn is this history, this utterance
and this reply. It prefills that prefix at once, while the user listens and speaks
(a warm request: one token, behind real turns), so the next turn prefills only its
utterance. The session's next start cancels the warm request if it still runs; what
it prefilled by then stays cached.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from actors.emitter import TurnEmitter
from actors.engines.base import Engine, EngineOutput, sampling_spec
from actors.prompts.chat import ChatPrompts
from actors.prompts.persona import compose_persona
from actors.prompts.units import UnitEncoder, prompt_pool
from bus.events import ChatStart, ToolStart, Warm, Warmed, request_id
from bus.history import append_turn
from configs.schema import ChatConfig

if TYPE_CHECKING:
    from actors.service import Spawn

__all__ = ["NEXT_WARM_PREFIX", "ChatWorker"]

# Request ids of next-turn warm requests: "warm-next:<session>:<turn that led to it>".
NEXT_WARM_PREFIX = "warm-next"

_log = logging.getLogger(__name__)


class ChatWorker:
    kind = "chat"

    def __init__(self, config: ChatConfig, engine: Engine, actor_id: str = "") -> None:
        self._config = config
        self._engine = engine
        self.actor_id = actor_id
        self._pool: ThreadPoolExecutor | None = None
        self._prompts: ChatPrompts | None = None
        self._spawn: Spawn | None = None
        # The running next-turn warm of each session that has one.
        self._next_warms: dict[str, asyncio.Task[None]] = {}
        # Warms spawned whose request has not reached the engine yet (prompt building).
        self._unsent: set[asyncio.Task[None]] = set()
        self.next_warms_started = 0
        self.next_warms_cancelled = 0

    async def open(self, spawn: Spawn | None = None) -> None:
        """Build the prompt encoder (the engine is started); ``spawn`` runs warm requests."""
        self._pool = prompt_pool("chat")
        self._prompts = self._new_prompts(self._pool)
        self._spawn = spawn

    async def close(self) -> None:
        for task in self._next_warms.values():
            task.cancel()
        self._next_warms.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    @property
    def prompts(self) -> ChatPrompts:
        if self._prompts is None:  # not opened (a bare worker in a test): encode inline
            self._prompts = self._new_prompts(None)
        return self._prompts

    def pending(self) -> int:
        """Warm requests spawned but not yet handed to the engine (heartbeats add them
        to the engine's count, so "idle" means nothing is about to start either)."""
        return len(self._unsent)

    def next_warm(self, session_id: str) -> asyncio.Task[None] | None:
        """The session's running next-turn warm, if any (tests wait on it)."""
        return self._next_warms.get(session_id)

    async def run_turn(self, event: ToolStart | ChatStart, emit: TurnEmitter) -> None:
        assert isinstance(event, ChatStart)
        self._stop_next_warm(event.session_id)
        config = self._config
        persona_text = compose_persona(event.persona)
        prompt_ids = await self.prompts.turn(
            persona_text=persona_text,
            history_text=event.history_text,
            user_utterance=event.user_utterance,
        )
        rid = request_id("chat", event.session_id, event.turn_id)
        sampling = sampling_spec(config.sampling, config.max_out, event.seed)
        last: EngineOutput | None = None
        reply: list[str] = []
        emit.clock.submit()
        try:
            async for output in self._engine.generate(
                prompt_ids, sampling, rid, priority=config.priority
            ):
                emit.clock.output(output)
                last = output
                if output.text:
                    reply.append(output.text)
                    await emit.token(output.text)
        except asyncio.CancelledError:
            await self._engine.abort(rid)
            raise
        reason = last.finish_reason if last is not None else "stop"
        await emit.done(
            "cancelled" if reason == "abort" else ("length" if reason == "length" else "stop"),
            prompt_tokens=last.prompt_tokens if last else 0,
            completion_tokens=last.completion_tokens if last else 0,
            cached_tokens=last.cached_tokens if last else 0,
        )
        if reason in ("stop", "length") and config.warm_next_turn:
            # What the client was sent is the reply it appends to its history.
            history = append_turn(event.history_text, event.user_utterance, "".join(reply))
            self._start_next_warm(event.session_id, event.turn_id, persona_text, history)

    async def warm(self, event: Warm) -> Warmed:
        persona_text = compose_persona(event.persona)
        if event.segment == "persona":
            ids = await self.prompts.persona_prefix(persona_text=persona_text)
            size = len(persona_text.encode())
        else:
            ids = await self.prompts.history_prefix(
                persona_text=persona_text, history_text=event.history_text
            )
            size = len(event.history_text.encode())
        tokens = await self._engine.warm(ids)
        return Warmed(event.session_id, event.turn_id, event.segment, size, tokens, self.actor_id)

    def _new_prompts(self, pool: ThreadPoolExecutor | None) -> ChatPrompts:
        return ChatPrompts(
            UnitEncoder(self._engine.tokenizer, pool),
            history_max_tokens=self._config.history_max_tokens,
            user_utt_max_tokens=self._config.user_utt_max_tokens,
        )

    def _stop_next_warm(self, session_id: str) -> None:
        task = self._next_warms.pop(session_id, None)
        if task is not None and not task.done():
            task.cancel()
            self.next_warms_cancelled += 1

    def _start_next_warm(
        self, session_id: str, turn_id: str, persona_text: str, history: str
    ) -> None:
        if self._spawn is None:
            return
        self._stop_next_warm(session_id)
        rid = f"{NEXT_WARM_PREFIX}:{session_id}:{turn_id}"
        task = self._spawn(self._warm_next(rid, persona_text, history))
        self._next_warms[session_id] = task
        self._unsent.add(task)
        self.next_warms_started += 1

        def forget(done: asyncio.Task[None]) -> None:
            self._unsent.discard(done)
            if self._next_warms.get(session_id) is done:
                del self._next_warms[session_id]

        task.add_done_callback(forget)

    async def _warm_next(self, rid: str, persona_text: str, history: str) -> None:
        """Prefill the next turn's prompt up to its utterance; best effort."""
        try:
            ids = await self.prompts.history_prefix(persona_text=persona_text, history_text=history)
            # No await between leaving the unsent set and the engine counting the
            # request: a heartbeat never sees the warm in neither.
            self._unsent.discard(asyncio.current_task())  # type: ignore[arg-type]
            if ids:
                await self._engine.warm(ids, request_id=rid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A failed warm costs the next turn its cache hit, nothing else; a dead
            # engine shows on that turn.
            _log.warning("next-turn warm %s failed: %r", rid, exc)
