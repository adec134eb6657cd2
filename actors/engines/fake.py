"""A deterministic engine for unit and integration tests; never a product default.

Its "model" is a script: the tool prompt gets a Hammer-style answer (a call when the
utterance mentions the screen, ``[]`` otherwise), the chat prompt gets the words
of a reply tagged with the utterance's first word, one word per step at
``bench_tokens_per_s``. The prompt's ids decode back to its text (``FakeTokenizer``
is one token per character), which the script reads. Tests read ``running()`` and
``aborted`` to prove requests really stop, and ``prompt_ids`` / ``warmed_ids`` to
check what the actors handed over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from actors.engines.base import EngineOutput, EngineRequestError, EngineStamps, SamplingSpec
from actors.engines.inflight import InFlight
from configs.schema import EngineConfig

__all__ = ["FakeEngine", "FakeTokenizer"]

TOOL_YES = '[{"name": "take_screenshot", "arguments": {}}]'
TOOL_NO = "[]"
# Markers a test puts in an utterance to steer the script.
SCREEN_WORDS = ("screen", "screenshot", "look at this")
FAIL_MARKER = "[[fail]]"
LONG_MARKER = "[[long]]"
USER_MARKER = "<|user|>\n"  # where FakeTokenizer's chat template puts the utterance


class FakeTokenizer:
    """One token per character: exact, reversible, no files."""

    eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(ch) for ch in text]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in token_ids)

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        *,
        tokenize: bool = False,
        add_generation_prompt: bool = False,
    ) -> str:
        parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in conversation]
        if add_generation_prompt:
            parts.append("<|assistant|>\n")
        return "".join(parts)


class FakeEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.model_id = f"fake:{config.model}"
        self._step_s = 1.0 / config.bench_tokens_per_s if config.bench_tokens_per_s > 0 else 0.0
        self._tokenizer = FakeTokenizer()
        self._requests = InFlight()
        self.aborted: list[str] = []
        self.warmed: list[str] = []
        self.warmed_ids: list[list[int]] = []
        self.warm_request_ids: list[str | None] = []
        self.prompts: list[str] = []
        self.prompt_ids: list[list[int]] = []
        # Set on every warm; a test waits on it instead of polling ``warmed``.
        self.warm_seen = asyncio.Event()

    @property
    def tokenizer(self) -> FakeTokenizer:
        return self._tokenizer

    async def start(self) -> None:
        return None

    def running(self) -> int:
        return len(self._requests)

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingSpec,
        request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[EngineOutput]:
        aborted = self._requests.add(request_id)
        prompt = self._tokenizer.decode(prompt_ids)
        if FAIL_MARKER in prompt:
            self._requests.release(request_id, aborted)
            raise EngineRequestError("scripted failure")
        self.prompts.append(prompt)
        self.prompt_ids.append(list(prompt_ids))
        pieces = self._script(prompt, sampling)
        prompt_tokens = len(prompt_ids)
        queued = time.monotonic()
        try:
            for count, piece in enumerate(pieces[: sampling.max_tokens], start=1):
                if self._step_s:
                    await asyncio.sleep(self._step_s)
                else:
                    await asyncio.sleep(0)
                if aborted.is_set():
                    yield EngineOutput(
                        text="",
                        finish_reason="abort",
                        prompt_tokens=prompt_tokens,
                        completion_tokens=count - 1,
                    )
                    return
                last = count == min(len(pieces), sampling.max_tokens)
                reason = None
                if last:
                    reason = "stop" if len(pieces) <= sampling.max_tokens else "length"
                yield EngineOutput(
                    text=piece,
                    finish_reason=reason,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=count,
                    stamps=EngineStamps(
                        queued=queued, scheduled=queued, first_token=time.monotonic()
                    )
                    if count == 1
                    else None,
                )
        except asyncio.CancelledError:
            if not aborted.is_set():  # an abort() before the cancellation counted already
                self.aborted.append(request_id)
            raise
        finally:
            self._requests.release(request_id, aborted)

    def clear_records(self) -> None:
        """Forget what the engine recorded (long tests that measure memory)."""
        for record in (
            self.aborted,
            self.warmed,
            self.warmed_ids,
            self.warm_request_ids,
            self.prompts,
            self.prompt_ids,
        ):
            record.clear()

    async def wait_idle(self) -> None:
        """Return once no request is running (tests bound it with a timeout)."""
        await self._requests.wait_idle()

    async def abort(self, request_id: str) -> None:
        event = self._requests.get(request_id)
        if event is not None and not event.is_set():
            event.set()
            self.aborted.append(request_id)

    async def warm(self, prompt_ids: Sequence[int], request_id: str | None = None) -> int:
        self.warmed.append(self._tokenizer.decode(prompt_ids))
        self.warmed_ids.append(list(prompt_ids))
        self.warm_request_ids.append(request_id)
        self.warm_seen.set()
        return len(prompt_ids)

    async def close(self) -> None:
        for request_id in self._requests.ids():
            await self.abort(request_id)

    @staticmethod
    def _script(prompt: str, sampling: SamplingSpec) -> list[str]:
        if "[BEGIN OF TASK INSTRUCTION]" in prompt:
            tail = prompt.rsplit("[BEGIN OF QUERY]", 1)[-1].lower()
            answer = TOOL_YES if any(w in tail for w in SCREEN_WORDS) else TOOL_NO
            return [answer[i : i + 4] for i in range(0, len(answer), 4)]
        # The reply echoes the utterance's first word, so a test can tag each turn and
        # prove no token of one session ever reaches another.
        utterance = prompt.rsplit(USER_MARKER, 1)[-1].split()
        tag = utterance[0] if utterance else "word"
        words = 400 if LONG_MARKER in prompt else 12
        return [f"{tag}{i} " for i in range(words - 1)] + ["end."]
