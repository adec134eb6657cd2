"""The one small interface every inference engine implements.

It is shaped after vLLM's ``AsyncLLM``: ``generate`` takes the prompt's token ids and
a caller-given request id and yields text deltas; ``abort`` of that id is idempotent
and ends the stream with a final output whose ``finish_reason`` is ``"abort"``;
cancelling the consuming task aborts the request too.

Prompts are token ids, not text: the actors render and encode prompts themselves,
keeping the ids of what repeats (``actors.prompts.units``), so no engine encodes a
prompt again. Each engine's ``tokenizer`` is the one those ids come from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec

from configs.schema import SamplingConfig

__all__ = [
    "Engine",
    "EngineDeadError",
    "EngineError",
    "EngineOutput",
    "EngineRequestError",
    "EngineStamps",
    "FinishReason",
    "SamplingSpec",
    "Tokenizer",
    "sampling_spec",
]

FinishReason = Literal["stop", "length", "abort"]


class EngineError(Exception):
    """Root of the engine errors."""


class EngineDeadError(EngineError):
    """The engine cannot serve any more requests; the actor process must stop."""


class EngineRequestError(EngineError):
    """One request failed (bad input, say); the engine keeps serving others."""


class SamplingSpec(msgspec.Struct, frozen=True, kw_only=True):
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


def sampling_spec(config: SamplingConfig, max_tokens: int, seed: int | None = None) -> SamplingSpec:
    """One request's sampling: the configured knobs, this request's length and seed."""
    return SamplingSpec(
        max_tokens=max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        min_p=config.min_p,
        repetition_penalty=config.repetition_penalty,
        stop=config.stop,
        seed=seed,
        ignore_eos=config.ignore_eos,
    )


class EngineStamps(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where a request's wait before its first token went, inside the engine.

    ``time.monotonic()`` seconds, which every process on the host shares (vLLM's
    engine core stamps in its own process); 0.0 where the engine does not say.
    """

    queued: float = 0.0  # the engine took the request in
    scheduled: float = 0.0  # a step first ran it
    first_token: float = 0.0  # the step that made its first token ended


class EngineOutput(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One step of a request: the new text since the last output.

    Token counts are cumulative; ``finish_reason`` is set on the last output only;
    ``stamps`` on the first output only, by engines that keep them.
    """

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    stamps: EngineStamps | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@runtime_checkable
class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the actors use for prompts and trimming."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        *,
        tokenize: bool = ...,
        add_generation_prompt: bool = ...,
    ) -> str: ...


class Engine(Protocol):
    """An inference engine owned by one actor process."""

    model_id: str

    @property
    def tokenizer(self) -> Tokenizer: ...

    async def start(self) -> None:
        """Load the model; returns when the engine can serve."""

    def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingSpec,
        request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[EngineOutput]:
        """Stream deltas for the prompt ``prompt_ids``; the last output has a ``finish_reason``.

        ``priority``: lower runs first where the engine schedules by priority (vLLM).

        Raises:
            EngineRequestError: this request failed; others are unaffected.
            EngineDeadError: the engine is gone.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop ``request_id`` if it is running; unknown or finished ids are ignored."""

    async def warm(self, prompt_ids: Sequence[int], request_id: str | None = None) -> int:
        """Prime the prefix cache with ``prompt_ids``; returns how many tokens that is.

        A warm request runs behind real turns. Cancelling the awaiting task stops it;
        what it computed by then stays cached where the engine can keep it. ``abort``
        of ``request_id`` (default: a fresh id) stops it too.
        """
        ...

    def running(self) -> int:
        """How many requests are generating now (0 once the system is idle)."""
        ...

    async def close(self) -> None:
        """Abort everything and release the model."""
