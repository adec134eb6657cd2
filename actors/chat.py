"""ChatActor's worker: persona, history and utterance in, a streamed reply out."""

from __future__ import annotations

import asyncio

from actors.emitter import TurnEmitter
from actors.engines.base import Engine, EngineOutput, sampling_spec
from actors.prompts.chat import build_chat_prompt, history_warm_prompt, persona_warm_prompt
from actors.prompts.persona import compose_persona
from bus.events import ChatStart, ToolStart, Warm, Warmed, request_id
from configs.schema import ChatConfig

__all__ = ["ChatWorker"]


class ChatWorker:
    kind = "chat"

    def __init__(self, config: ChatConfig, engine: Engine, actor_id: str = "") -> None:
        self._config = config
        self._engine = engine
        self.actor_id = actor_id

    async def run_turn(self, event: ToolStart | ChatStart, emit: TurnEmitter) -> None:
        assert isinstance(event, ChatStart)
        config = self._config
        prompt = build_chat_prompt(
            self._engine.tokenizer,
            persona_text=compose_persona(event.persona),
            history_text=event.history_text,
            user_utterance=event.user_utterance,
            history_max_tokens=config.history_max_tokens,
            user_utt_max_tokens=config.user_utt_max_tokens,
        )
        rid = request_id("chat", event.session_id, event.turn_id)
        sampling = sampling_spec(config.sampling, config.max_out, event.seed)
        last: EngineOutput | None = None
        try:
            async for output in self._engine.generate(
                prompt.text, sampling, rid, priority=config.priority
            ):
                last = output
                if output.text:
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

    async def warm(self, event: Warm) -> Warmed:
        tokenizer = self._engine.tokenizer
        persona_text = compose_persona(event.persona)
        if event.segment == "persona":
            prompt = persona_warm_prompt(tokenizer, persona_text)
            size = len(persona_text.encode())
        else:
            prompt = history_warm_prompt(
                tokenizer, persona_text, event.history_text, self._config.history_max_tokens
            )
            size = len(event.history_text.encode())
        tokens = await self._engine.warm(prompt)
        return Warmed(event.session_id, event.turn_id, event.segment, size, tokens, self.actor_id)
