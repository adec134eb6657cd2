"""ToolActor's worker: the Hammer prompt in, a yes/no tool decision out.

The prompt goes to the engine as token ids from cached units
(``actors.prompts.hammer.ToolPrompts``): the instruction, tool and format sections
are encoded once per process, a session's history lines once, a turn its query. The
decision is published at the first token that settles it, and with ``early_stop``
the request is aborted there: in sequential mode the edge starts the chat leg on
that event, in concurrent mode it releases the held chat tokens on it.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from actors.emitter import TurnEmitter
from actors.engines.base import Engine, EngineOutput, EngineRequestError, sampling_spec
from actors.prompts.hammer import TAKE_SCREENSHOT_TOOL, ToolPrompts
from actors.prompts.toolparse import ToolDecider, ToolDecision
from actors.prompts.units import UnitEncoder, prompt_pool
from bus.events import ChatStart, ToolStart, Warm, Warmed, request_id
from configs.schema import ToolConfig

if TYPE_CHECKING:
    from actors.service import Spawn

__all__ = ["ToolWorker"]

_TOOLS = (TAKE_SCREENSHOT_TOOL,)
_WARM_HISTORY = "User: hi\nAssistant: Hi! How can I help?"
_WARM_UTTERANCE = "what's on my screen?"

_log = logging.getLogger(__name__)


class ToolWorker:
    kind = "tool"

    def __init__(self, config: ToolConfig, engine: Engine) -> None:
        self._config = config
        self._engine = engine
        self._sampling = sampling_spec(config.sampling, config.max_out)
        self._pool: ThreadPoolExecutor | None = None
        self._prompts: ToolPrompts | None = None

    async def open(self, spawn: Spawn | None = None) -> None:
        """Build the prompt encoder and warm the engine with one turn's prompt; the
        engine is started."""
        self._pool = prompt_pool("tool")
        self._prompts = self._new_prompts(self._pool)
        # The first request after a start pays one-off costs (on an H200 the first
        # decision took 90 ms against ~25 ms after it, docs/benchmarks-gpu.md): a warm
        # request pays them here, and leaves the head every prompt shares (instruction,
        # tools, format) in the prefix cache.
        ids = await self._prompts.turn(user_utterance=_WARM_UTTERANCE, history_text=_WARM_HISTORY)
        try:
            await self._engine.warm(ids)
        except EngineRequestError as exc:
            _log.warning("tool warm-up failed; the first turn pays for it: %s", exc)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def pending(self) -> int:
        """Requests about to reach the engine outside a turn: the tool actor has none."""
        return 0

    @property
    def prompts(self) -> ToolPrompts:
        if self._prompts is None:  # not opened (a bare worker in a test): encode inline
            self._prompts = self._new_prompts(None)
        return self._prompts

    async def run_turn(self, event: ToolStart | ChatStart, emit: TurnEmitter) -> None:
        config = self._config
        prompt_ids = await self.prompts.turn(
            user_utterance=event.user_utterance, history_text=event.history_text
        )
        rid = request_id("tool", event.session_id, event.turn_id)
        decider = ToolDecider(_TOOLS)
        decision: ToolDecision | None = None
        last: EngineOutput | None = None
        emit.clock.submit()
        try:
            async for output in self._engine.generate(
                prompt_ids, self._sampling, rid, priority=config.priority
            ):
                emit.clock.output(output)
                last = output
                if decision is not None:
                    continue  # draining the stream after an early stop
                decision = decider.feed(output.text)
                if decision is not None:
                    # Publish the moment the answer is certain; the client is waiting.
                    await emit.toolcall(decision.status, decision.raw, decision.calls)
                    if config.early_stop and not output.finished:
                        await self._engine.abort(rid)
        except asyncio.CancelledError:
            await self._engine.abort(rid)
            raise
        if decision is None:
            decision = decider.finish()
            await emit.toolcall(decision.status, decision.raw, decision.calls)
        await emit.done(
            "length" if last is not None and last.finish_reason == "length" else "stop",
            prompt_tokens=last.prompt_tokens if last else 0,
            completion_tokens=last.completion_tokens if last else 0,
            cached_tokens=last.cached_tokens if last else 0,
        )

    async def warm(self, event: Warm) -> Warmed:
        raise NotImplementedError("the tool actor has no prefix to warm")

    def _new_prompts(self, pool: ThreadPoolExecutor | None) -> ToolPrompts:
        return ToolPrompts(
            UnitEncoder(self._engine.tokenizer, pool),
            history_max_tokens=self._config.history_max_tokens,
            user_utt_max_tokens=self._config.user_utt_max_tokens,
            tools=_TOOLS,
        )
