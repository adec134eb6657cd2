"""An engine with no model, for benchmarking the bus and the edge; never a default.

It streams one short word per step at ``bench_tokens_per_s`` so that what a
benchmark measures is the path around the engine (NATS, actors, edge, client),
not the model. Steps are scheduled against an absolute clock (step ``k`` is due at
``start + k * interval``), so a late wake-up is caught up instead of pushing every
later token back. The tool prompt answers ``[]`` in one step.

Aborts are immediate: the stream waits for each step on an ``asyncio.Event`` with
the step's deadline as timeout, so ``abort()`` ends it with ``finish_reason
"abort"`` at once, not at the next tick. ``abort_times`` keeps, per aborted id,
the ``time.monotonic()`` of the ``abort()`` call, or of the consuming task's
cancellation (how actors stop a turn), which a benchmark on the same host can
compare with when it sent the cancel.

Two options serve ``bench.overhead``, which measures the bus in other processes:
``bench_stamp`` writes each delta as ``tok@<time.monotonic_ns()> `` (CLOCK_MONOTONIC
is one clock for every process on a Linux host, so a client can take its own
``monotonic_ns()`` at arrival and get the one-way delay), and ``bench_abort_log``
names a file that gets one ``<request_id> <monotonic_ns>`` line per abort.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from actors.engines.base import EngineOutput, SamplingSpec
from actors.engines.fake import FakeTokenizer
from actors.engines.inflight import InFlight
from configs.schema import EngineConfig

__all__ = ["BenchEngine"]

TOOL_MARKER = "[BEGIN OF TASK INSTRUCTION]"
# How far into the prompt the marker is looked for (past the template's opener).
TOOL_MARKER_WITHIN = 128
TOOL_ANSWER = "[]"
WORD = "tok "
# Every SENTENCE_WORDS-th word ends a sentence, so first-sentence latency is measurable.
SENTENCE_WORDS = 8
SENTENCE_END = "tok. "
STAMPED_WORD = "tok@{ns} "
STAMPED_SENTENCE_END = "tok@{ns}. "


class BenchEngine:
    """Paced, compute-free deltas; ``running()`` counts streams not yet finished."""

    def __init__(self, config: EngineConfig) -> None:
        self.model_id = f"bench:{config.model}"
        rate = config.bench_tokens_per_s
        self._interval_s = 1.0 / rate if rate > 0 else 0.0
        self._tokenizer = FakeTokenizer()
        self._requests = InFlight()
        self.abort_times: dict[str, float] = {}
        self._stamp = config.bench_stamp
        # Line-buffered: a reader sees each abort as soon as it happens.
        self._abort_log = (
            open(config.bench_abort_log, "a", buffering=1)  # noqa: SIM115 (closed in close())
            if config.bench_abort_log
            else None
        )

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
        prompt_tokens = len(prompt_ids)
        # FakeTokenizer ids are characters; the Hammer marker opens the tool prompt, so
        # its head is all that needs decoding.
        is_tool = TOOL_MARKER in self._tokenizer.decode(prompt_ids[:TOOL_MARKER_WITHIN])
        steps = 1 if is_tool else max(sampling.max_tokens, 0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if steps == 0:
                self._requests.release(request_id, aborted)
                yield EngineOutput(text="", finish_reason="length", prompt_tokens=prompt_tokens)
                return
            for step in range(1, steps + 1):
                if await self._wait_step(aborted, started + step * self._interval_s):
                    # Unregister before yielding: the consumer may never resume us.
                    self._requests.release(request_id, aborted)
                    yield EngineOutput(
                        text="",
                        finish_reason="abort",
                        prompt_tokens=prompt_tokens,
                        completion_tokens=step - 1,
                    )
                    return
                if is_tool:
                    self._requests.release(request_id, aborted)
                    yield EngineOutput(
                        text=TOOL_ANSWER,
                        finish_reason="stop",
                        prompt_tokens=prompt_tokens,
                        completion_tokens=len(TOOL_ANSWER),
                    )
                    return
                last = step == steps
                if last:
                    self._requests.release(request_id, aborted)
                yield EngineOutput(
                    text=self._word(step),
                    finish_reason="length" if last else None,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=step,
                )
        except asyncio.CancelledError:
            # Actors stop a turn by cancelling the task that consumes the stream; for
            # a cancel-to-abort measurement that moment is the abort.
            if request_id not in self.abort_times:
                self._record_abort(request_id)
            raise
        finally:
            # Also reached when the consumer closes the stream early.
            self._requests.release(request_id, aborted)

    def _word(self, step: int) -> str:
        sentence_end = step % SENTENCE_WORDS == 0
        if self._stamp:
            template = STAMPED_SENTENCE_END if sentence_end else STAMPED_WORD
            return template.format(ns=time.monotonic_ns())
        return SENTENCE_END if sentence_end else WORD

    def _record_abort(self, request_id: str) -> None:
        now_ns = time.monotonic_ns()
        self.abort_times[request_id] = now_ns / 1e9  # the time.monotonic() scale
        if self._abort_log is not None:
            self._abort_log.write(f"{request_id} {now_ns}\n")

    async def wait_idle(self) -> None:
        """Return once no request is running (callers bound it with a timeout)."""
        await self._requests.wait_idle()

    async def _wait_step(self, aborted: asyncio.Event, due: float) -> bool:
        """Wait until ``due`` (loop time) or an abort; true when aborted."""
        if aborted.is_set():
            return True
        if self._interval_s == 0.0 or due <= asyncio.get_running_loop().time():
            # Unpaced or behind schedule: catch up now, but still let others run.
            await asyncio.sleep(0)
            return aborted.is_set()
        try:
            async with asyncio.timeout_at(due):
                await aborted.wait()
        except TimeoutError:
            return aborted.is_set()
        return True

    async def abort(self, request_id: str) -> None:
        event = self._requests.get(request_id)
        if event is None or event.is_set():
            return
        self._record_abort(request_id)
        event.set()

    async def warm(self, prompt_ids: Sequence[int], request_id: str | None = None) -> int:
        return len(prompt_ids)

    async def close(self) -> None:
        for request_id in self._requests.ids():
            await self.abort(request_id)
        if self._abort_log is not None:
            self._abort_log.close()
            self._abort_log = None
