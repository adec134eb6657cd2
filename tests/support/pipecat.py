"""Real Pipecat pipelines for the Pipecat service's tests.

:func:`pipeline_params` is what every test runs with (metrics on).
:func:`run_pipeline` runs ``Pipeline([source, processor, sink])`` on a real
``PipelineWorker`` and lets a test send frames one at a time and wait for what
comes out, where Pipecat's ``run_test`` sends all frames at once (an interruption
must come after the first text, not before it). :func:`context_frame` builds a
turn's ``LLMContextFrame``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    StartFrame,
)
from pipecat.metrics.metrics import (
    LLMUsageMetricsData,
    MetricsData,
    ProcessingMetricsData,
    TTFBMetricsData,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

__all__ = [
    "LLMUsageMetricsData",
    "PipelineRun",
    "ProcessingMetricsData",
    "TTFBMetricsData",
    "context_frame",
    "metrics",
    "pipeline_params",
    "replies",
    "run_pipeline",
]

M = TypeVar("M", bound=MetricsData)


def pipeline_params() -> PipelineParams:
    return PipelineParams(enable_metrics=True, enable_usage_metrics=True)


def context_frame(*messages: tuple[str, str]) -> LLMContextFrame:
    """An ``LLMContextFrame`` of ``(role, content)`` messages, oldest first."""
    return LLMContextFrame(
        context=LLMContext(messages=[{"role": role, "content": text} for role, text in messages])  # type: ignore[misc]
    )


def replies(frames: Sequence[Frame]) -> list[str]:
    """The text of each response (Start ... End) in ``frames``, in order.

    Fails the test if text comes outside a response or responses nest.
    """
    texts: list[str] = []
    current: list[str] | None = None
    for frame in frames:
        if isinstance(frame, LLMFullResponseStartFrame):
            assert current is None, "a response started inside another"
            current = []
        elif isinstance(frame, LLMTextFrame):
            assert current is not None, f"text outside a response: {frame.text!r}"
            current.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame):
            assert current is not None, "a response ended that never started"
            texts.append("".join(current))
            current = None
    return texts


def metrics(frames: Sequence[Frame], kind: type[M]) -> list[M]:
    """Every metrics item of ``kind`` pushed during a response (Start ... End).

    Pipecat sends a zeroed metrics frame when the pipeline starts; it is not counted.
    """
    found: list[M] = []
    inside = False
    for frame in frames:
        if isinstance(frame, LLMFullResponseStartFrame):
            inside = True
        elif isinstance(frame, LLMFullResponseEndFrame):
            inside = False
        elif inside and isinstance(frame, MetricsFrame):
            found.extend(item for item in frame.data if isinstance(item, kind))
    return found


class _Recorder(FrameProcessor):
    """Records the frames passing one way and wakes whoever waits on them."""

    def __init__(self, direction: FrameDirection, frames: list[Frame], changed: asyncio.Event):
        super().__init__(enable_direct_mode=True)
        self._direction = direction
        self._frames = frames
        self._changed = changed

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self._direction and not isinstance(frame, StartFrame):
            self._frames.append(frame)
            self._changed.set()
        await self.push_frame(frame, direction)


@dataclass
class PipelineRun:
    """A running pipeline: what reached its ends, and a way to feed it."""

    worker: PipelineWorker
    down: list[Frame] = field(default_factory=list)
    up: list[Frame] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, frame: Frame) -> None:
        await self.worker.queue_frame(frame)

    async def wait_for(
        self,
        predicate: Callable[[Frame], bool],
        *,
        direction: FrameDirection = FrameDirection.DOWNSTREAM,
        after: int = 0,
        within: float = 10.0,
    ) -> int:
        """Index of the first frame at or after ``after`` that matches ``predicate``."""
        frames = self.down if direction == FrameDirection.DOWNSTREAM else self.up
        async with asyncio.timeout(within):
            while True:
                for index in range(after, len(frames)):
                    if predicate(frames[index]):
                        return index
                self.changed.clear()
                await self.changed.wait()

    async def wait_responses(self, count: int, within: float = 10.0) -> list[str]:
        """Wait until ``count`` responses have ended downstream; their texts."""
        async with asyncio.timeout(within):
            while len(found := replies(self.down)) < count:
                self.changed.clear()
                await self.changed.wait()
        return found


@contextlib.asynccontextmanager
async def run_pipeline(
    processor: FrameProcessor, *, start_within: float = 15.0, **worker: Any
) -> AsyncIterator[PipelineRun]:
    """Run ``processor`` in a real pipeline until the block ends, then end it with an
    ``EndFrame`` (queued behind whatever the test sent)."""
    changed = asyncio.Event()
    down: list[Frame] = []
    up: list[Frame] = []
    pipeline = Pipeline(
        [
            _Recorder(FrameDirection.UPSTREAM, up, changed),
            processor,
            _Recorder(FrameDirection.DOWNSTREAM, down, changed),
        ]
    )
    task = PipelineWorker(
        pipeline, params=pipeline_params(), cancel_on_idle_timeout=False, **worker
    )
    started = asyncio.Event()

    @task.event_handler("on_pipeline_started")
    async def _started(_worker: PipelineWorker, _frame: StartFrame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(task)
    running = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(start_within):
            await started.wait()
        yield PipelineRun(worker=task, down=down, up=up, changed=changed)
        await task.queue_frame(EndFrame())
        async with asyncio.timeout(15):
            await running
    finally:
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
