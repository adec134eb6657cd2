"""The chat and tool workers: token ids to the engine, next-turn warming, its cancel.

No bus: a recording emitter stands in for the NATS one. The CPU engine test measures
what warming buys on the transformers engine's prefix LRU: the second turn's cached
tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from actors.chat import NEXT_WARM_PREFIX, ChatWorker
from actors.emitter import LegClock
from actors.engines.fake import FakeEngine
from actors.engines.transformers_engine import TransformersEngine
from actors.prompts.chat import build_chat_prompt
from actors.prompts.hammer import TAKE_SCREENSHOT_TOOL, build_tool_prompt
from actors.prompts.persona import compose_persona
from actors.tool import ToolWorker
from bus.events import ChatStart, Persona, ToolStart, Warm
from bus.history import append_turn
from configs.schema import ChatConfig, ToolConfig

PERSONA = Persona(assistant_gender="woman", persona_style="wholesome")


class RecordingEmitter:
    """TurnEmitter's surface, recording instead of publishing."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.toolcalls: list[tuple[str, str]] = []
        self.dones: list[tuple[str, dict[str, int]]] = []
        self.first_token = asyncio.Event()
        self.clock = LegClock()

    async def token(self, text: str) -> None:
        self.tokens.append(text)
        self.first_token.set()

    async def toolcall(self, status: str, raw: str, calls: Any) -> None:
        self.toolcalls.append((status, raw))

    async def error(self, code: str, message: str) -> None:
        raise AssertionError(f"unexpected error {code}: {message}")

    async def done(self, reason: str, **usage: int) -> None:
        self.dones.append((reason, usage))

    @property
    def text(self) -> str:
        return "".join(self.tokens)


class Spawner:
    """The service's spawn: background tasks the test can wait for."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def __call__(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    async def settle(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)


def chat_start(session: str, turn: str, utterance: str, history: str = "") -> ChatStart:
    return ChatStart(session, turn, utterance, PERSONA, history, seed=7)


async def run_chat(worker: ChatWorker, event: ChatStart) -> RecordingEmitter:
    emit = RecordingEmitter()
    await worker.run_turn(event, emit)  # type: ignore[arg-type]
    return emit


@pytest.fixture
async def fake_chat() -> tuple[ChatWorker, FakeEngine, Spawner]:
    config = ChatConfig(backend="fake", bench_tokens_per_s=0)
    engine = FakeEngine(config)
    worker = ChatWorker(config, engine, "chat-0")
    spawner = Spawner()
    await worker.open(spawner)
    return worker, engine, spawner


async def test_chat_hands_the_engine_the_text_paths_ids(fake_chat) -> None:
    """The engine gets token ids, exactly the text path's prompt encoded."""
    worker, engine, _ = fake_chat
    history = "User: hi\nAssistant: hello there."
    emit = await run_chat(worker, chat_start("s1", "t1", "what now?", history))
    expected = build_chat_prompt(
        engine.tokenizer,
        persona_text=compose_persona(PERSONA),
        history_text=history,
        user_utterance="what now?",
    ).text
    assert engine.prompt_ids == [engine.tokenizer.encode(expected)]
    assert emit.dones[0][0] == "stop" and emit.text.startswith("what0 ")
    await worker.close()


async def test_a_done_reply_warms_the_next_turns_prefix(fake_chat) -> None:
    """After a reply the worker warms the next prompt's prefix (history + this exchange),
    and the client's next turn, its history built with bus.history, starts with it."""
    worker, engine, spawner = fake_chat
    first = await run_chat(worker, chat_start("s1", "t1", "tell me more", "User: a\nAssistant: b"))
    await spawner.settle()
    assert len(engine.warmed_ids) == 1
    history = append_turn("User: a\nAssistant: b", "tell me more", first.text)
    await run_chat(worker, chat_start("s1", "t2", "and then?", history))
    warm, turn = engine.warmed_ids[0], engine.prompt_ids[1]
    assert turn[: len(warm)] == warm
    assert len(warm) > len(turn) - 40  # all but the new utterance and the markup around it
    assert worker.next_warms_started == 2 and worker.next_warms_cancelled == 0
    await worker.close()


async def test_the_next_start_cancels_a_running_warm() -> None:
    """A warm still running when the session's next start comes is cancelled (and the
    engine told to stop it); other sessions' warms are left alone."""

    class SlowWarm(FakeEngine):
        def __init__(self, config: ChatConfig) -> None:
            super().__init__(config)
            self.entered = asyncio.Event()
            self.cancelled: list[str] = []

        async def warm(self, prompt_ids: Sequence[int], request_id: str | None = None) -> int:
            self.entered.set()
            try:
                await asyncio.Event().wait()  # never finishes on its own
            except asyncio.CancelledError:
                self.cancelled.append(request_id or "")
                raise
            return 0

    config = ChatConfig(backend="fake", bench_tokens_per_s=0)
    engine = SlowWarm(config)
    worker = ChatWorker(config, engine, "chat-0")
    spawner = Spawner()
    await worker.open(spawner)
    await run_chat(worker, chat_start("s1", "t1", "hi"))
    assert worker.pending() == 1  # spawned, its prompt not built yet: counted as running
    await engine.entered.wait()
    assert worker.pending() == 0  # now the engine counts it
    engine.entered.clear()
    await run_chat(worker, chat_start("s2", "t1", "hi"))
    await engine.entered.wait()
    warm = worker.next_warm("s1")
    assert warm is not None and not warm.done()
    await run_chat(worker, chat_start("s1", "t2", "again"))
    with pytest.raises(asyncio.CancelledError):
        await warm
    assert engine.cancelled == [f"{NEXT_WARM_PREFIX}:s1:t1"]
    assert worker.next_warms_cancelled == 1
    other = worker.next_warm("s2")
    assert other is not None and not other.done()
    await worker.close()
    await spawner.settle()
    assert all(task.done() for task in spawner.tasks)


async def test_a_cancelled_reply_warms_nothing(fake_chat) -> None:
    """A turn cut off by a cancel leaves the next prompt unknown: no warm."""
    worker, engine, spawner = fake_chat
    emit = RecordingEmitter()
    task = asyncio.ensure_future(worker.run_turn(chat_start("s1", "t1", "[[long]] go"), emit))  # type: ignore[arg-type]
    await emit.first_token.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await spawner.settle()
    assert engine.warmed_ids == [] and worker.next_warms_started == 0
    await worker.close()


async def test_warm_events_prime_the_turns_prefixes(fake_chat) -> None:
    """warm_persona and warm_history prime ids that the turns then start with."""
    worker, engine, _ = fake_chat
    history = "User: x\nAssistant: y."
    persona = await worker.warm(Warm("s1", "w1", "persona", PERSONA))
    warmed = await worker.warm(Warm("s1", "w2", "history", PERSONA, history))
    await run_chat(worker, chat_start("s1", "t1", "hey", history))
    turn = engine.prompt_ids[0]
    assert persona.tokens == len(engine.warmed_ids[0]) > 100
    assert turn[: warmed.tokens] == engine.warmed_ids[1]
    assert turn[: persona.tokens] == engine.warmed_ids[0]
    await worker.close()


async def test_tool_hands_the_engine_the_text_paths_ids() -> None:
    """The tool worker sends the Hammer prompt as ids and decides from the stream."""
    config = ToolConfig(backend="fake", bench_tokens_per_s=0)
    engine = FakeEngine(config)
    worker = ToolWorker(config, engine)
    await worker.open()
    emit = RecordingEmitter()
    event = ToolStart("s1", "t1", "can you look at my screen?", "User: hi")
    await worker.run_turn(event, emit)  # type: ignore[arg-type]
    expected = build_tool_prompt(
        engine.tokenizer, user_utterance="can you look at my screen?", history_text="User: hi"
    )
    assert engine.prompt_ids == [engine.tokenizer.encode(expected)]
    assert emit.toolcalls[0][0] == "yes"
    # Opening warmed the engine with a turn's prompt: its head (instruction, tools)
    # is the real turn's prefix, so the first turn finds it cached.
    (warm,) = engine.warmed_ids
    shared = next(
        (i for i, (a, b) in enumerate(zip(warm, engine.prompt_ids[0], strict=False)) if a != b),
        min(len(warm), len(engine.prompt_ids[0])),
    )
    assert TAKE_SCREENSHOT_TOOL["name"] in engine.tokenizer.decode(warm[:shared])
    # The leg's stamps: prompt handed over, then the engine's first output with the
    # engine's own stamps, in that order.
    clock = emit.clock
    assert clock.engine is not None
    assert 0 < clock.submitted <= clock.engine.queued <= clock.engine.first_token
    assert clock.engine.first_token <= clock.first_output
    await worker.close()


async def test_next_turn_warming_hits_the_cpu_engines_prefix_cache(tmp_path_factory) -> None:
    """On the transformers engine, the second turn of a canonical conversation reads all
    of its prompt but the new utterance from the warm prefix."""
    cache = Path(tmp_path_factory.getbasetemp()) / "tiny-models"  # shared with engine tests
    config = ChatConfig(model="tiny-qwen2", model_cache_dir=str(cache), max_out=12)
    engine = TransformersEngine(config)
    await engine.start()
    worker = ChatWorker(config, engine, "chat-0")
    spawner = Spawner()
    await worker.open(spawner)
    try:
        history = "User: hello\nAssistant: hi, how are you?"
        first = await run_chat(worker, chat_start("s1", "t1", "fine, thanks", history))
        assert first.dones[0][1]["cached_tokens"] == 0
        await spawner.settle()
        history = append_turn(history, "fine, thanks", first.text)
        second = await run_chat(worker, chat_start("s1", "t2", "what shall we do?", history))
        usage = second.dones[0][1]
        # The utterance, its markup and the generation prompt: a dozen tokens or so.
        assert usage["prompt_tokens"] - usage["cached_tokens"] < 20
        assert usage["cached_tokens"] > 100
    finally:
        await worker.close()
        await engine.close()
