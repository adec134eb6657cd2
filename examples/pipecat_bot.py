"""A text-only Pipecat bot on yap-bus (`just start`, then run this). Mention your screen to
see the tool call; type while a reply streams to interrupt it. YAP_URL, YAP_API_KEY override."""

import asyncio
import os
import sys
import uuid

from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    FunctionCallResultProperties,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMMessagesAppendFrame,
    LLMTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.workers.runner import WorkerRunner

from integrations.pipecat import YapLLMService


class Printer(FrameProcessor):
    """Where a voice bot has TTS: print the reply as it streams."""

    speaking = False

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            print(frame.text if self.speaking else f"bot: {frame.text}", end="", flush=True)
            self.speaking = True
        elif isinstance(frame, LLMFullResponseEndFrame) and self.speaking:
            print(flush=True)
            self.speaking = False
        elif isinstance(frame, InterruptionFrame):  # (the cut reply's End came first)
            print("\n[interrupted]" if self.speaking else "[interrupted]", flush=True)
            self.speaking = False
        await self.push_frame(frame, direction)


async def take_screenshot(params: FunctionCallParams) -> None:
    print(f"[tool] {params.function_name} (call {params.tool_call_id})", flush=True)
    # The edge streams the reply anyway: settle without asking for another turn.
    done = FunctionCallResultProperties(run_llm=False)
    await params.result_callback({"image": "none in a text demo"}, properties=done)


async def main() -> None:
    logger.configure(handlers=[{"sink": sys.stderr, "level": "WARNING"}])  # no DEBUG per frame
    llm = YapLLMService(
        url=os.environ.get("YAP_URL", "ws://127.0.0.1:8000/ws"),
        api_key=os.environ.get("YAP_API_KEY", "yap_token"),
        session_id=f"demo-{uuid.uuid4().hex[:8]}",
        assistant_gender="woman",
    )
    llm.register_function("take_screenshot", take_screenshot)
    context, printer = LLMContextAggregatorPair(LLMContext()), Printer()
    pipeline = Pipeline([context.user(), llm, printer, context.assistant()])
    worker = PipelineWorker(pipeline, cancel_on_idle_timeout=False)
    await (runner := WorkerRunner(handle_sigint=False)).add_workers(worker)
    running = asyncio.create_task(runner.run())
    while line := await asyncio.to_thread(sys.stdin.readline):
        if printer.speaking:  # the user talks over the bot: barge in
            await worker.queue_frame(InterruptionFrame())
        message = {"role": "user", "content": line.strip()}
        await worker.queue_frame(LLMMessagesAppendFrame(messages=[message], run_llm=True))
    await worker.queue_frame(EndFrame())
    await running


if __name__ == "__main__":
    asyncio.run(main())
