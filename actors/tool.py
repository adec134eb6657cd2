"""ToolActor's worker: the Hammer prompt in, a yes/no tool decision out."""

from __future__ import annotations

import asyncio

from actors.emitter import TurnEmitter
from actors.engines.base import Engine, EngineOutput, sampling_spec
from actors.prompts.hammer import TAKE_SCREENSHOT_TOOL, build_tool_prompt
from actors.prompts.toolparse import ToolDecider, ToolDecision
from bus.events import ChatStart, ToolStart, Warm, Warmed, request_id
from configs.schema import ToolConfig

__all__ = ["ToolWorker"]

_TOOLS = (TAKE_SCREENSHOT_TOOL,)


class ToolWorker:
    kind = "tool"

    def __init__(self, config: ToolConfig, engine: Engine) -> None:
        self._config = config
        self._engine = engine
        self._sampling = sampling_spec(config.sampling, config.max_out)

    async def run_turn(self, event: ToolStart | ChatStart, emit: TurnEmitter) -> None:
        config = self._config
        prompt = build_tool_prompt(
            self._engine.tokenizer,
            user_utterance=event.user_utterance,
            history_text=event.history_text,
            history_max_tokens=config.history_max_tokens,
            user_utt_max_tokens=config.user_utt_max_tokens,
            tools=_TOOLS,
        )
        rid = request_id("tool", event.session_id, event.turn_id)
        decider = ToolDecider(_TOOLS)
        decision: ToolDecision | None = None
        last: EngineOutput | None = None
        try:
            async for output in self._engine.generate(
                prompt, self._sampling, rid, priority=config.priority
            ):
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
