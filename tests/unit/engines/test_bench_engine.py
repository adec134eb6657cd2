"""The benchmark engine: output counts and order, tool answers, abort semantics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from actors.engines.base import EngineOutput, EngineRequestError, SamplingSpec
from actors.engines.bench import BenchEngine
from actors.engines.fake import FakeTokenizer
from configs.schema import EngineConfig

TOOL_PROMPT = "[BEGIN OF TASK INSTRUCTION] pick a tool [BEGIN OF QUERY] hi"
# So slow that any output within a test's lifetime can only come from an abort.
STALLED = 0.001


def ids(text: str) -> list[int]:
    """A prompt's ids: the fake tokenizer is one id per character."""
    return FakeTokenizer().encode(text)


def _engine(tokens_per_s: float = 0.0) -> BenchEngine:
    return BenchEngine(EngineConfig(backend="bench", model="m", bench_tokens_per_s=tokens_per_s))


async def _drain(stream: AsyncIterator[EngineOutput]) -> list[EngineOutput]:
    return [output async for output in stream]


async def _until_running(engine: BenchEngine, count: int) -> None:
    # One yield lets tasks created before it run to their first wait, where the
    # streams have registered: ordering, not timing.
    await asyncio.sleep(0)
    assert engine.running() == count


async def test_chat_stream_emits_max_tokens_words() -> None:
    """A chat prompt yields max_tokens one-word deltas, the last with reason length."""
    engine = _engine()
    outputs = await _drain(engine.generate(ids("hello"), SamplingSpec(max_tokens=20), "r1"))
    assert len(outputs) == 20
    assert [o.completion_tokens for o in outputs] == list(range(1, 21))
    assert all(o.finish_reason is None for o in outputs[:-1])
    assert outputs[-1].finish_reason == "length"
    assert all(o.prompt_tokens == len("hello") for o in outputs)
    assert all(len(o.text.split()) == 1 for o in outputs)
    assert outputs[7].text.rstrip().endswith(".")  # sentences end every few words
    assert engine.running() == 0
    assert engine.abort_times == {}


async def test_paced_stream_completes() -> None:
    """A paced stream delivers the same outputs in order (pacing itself is not timed here)."""
    engine = _engine(tokens_per_s=2000.0)
    outputs = await _drain(engine.generate(ids("p"), SamplingSpec(max_tokens=5), "r"))
    assert [o.completion_tokens for o in outputs] == [1, 2, 3, 4, 5]
    assert outputs[-1].finished


async def test_tool_prompt_answers_empty_list_once() -> None:
    """A tool prompt gets ``[]`` in one final output."""
    engine = _engine()
    outputs = await _drain(engine.generate(ids(TOOL_PROMPT), SamplingSpec(max_tokens=10), "t"))
    assert len(outputs) == 1
    assert outputs[0].text == "[]"
    assert outputs[0].finish_reason == "stop"
    assert engine.running() == 0


async def test_running_drops_when_final_output_is_yielded() -> None:
    """running() is exact even when the consumer never resumes after the last output."""
    engine = _engine()
    stream = engine.generate(ids("x"), SamplingSpec(max_tokens=2), "r")
    first = await anext(stream)
    assert not first.finished
    assert engine.running() == 1
    last = await anext(stream)
    assert last.finished
    assert engine.running() == 0
    await stream.aclose()


async def test_abort_ends_a_waiting_stream_at_once() -> None:
    """abort() ends a stream waiting for its next tick with reason abort, without the tick."""
    engine = _engine(tokens_per_s=STALLED)
    stream = engine.generate(ids("x"), SamplingSpec(max_tokens=50), "slow")
    pending = asyncio.ensure_future(anext(stream))
    await _until_running(engine, 1)
    await engine.abort("slow")
    output = await asyncio.wait_for(pending, timeout=5.0)
    assert output.finish_reason == "abort"
    assert output.completion_tokens == 0
    assert engine.running() == 0
    assert "slow" in engine.abort_times
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_abort_mid_stream_reports_tokens_so_far() -> None:
    """An abort after k outputs yields one abort output counting k tokens, then ends."""
    engine = _engine()
    stream = engine.generate(ids("x"), SamplingSpec(max_tokens=100), "r")
    for _ in range(3):
        await anext(stream)
    await engine.abort("r")
    rest = await _drain(stream)
    assert len(rest) == 1
    assert rest[0].finish_reason == "abort"
    assert rest[0].completion_tokens == 3
    assert engine.running() == 0


async def test_abort_is_idempotent_and_ignores_unknown_ids() -> None:
    """Repeated aborts keep the first call's time; unknown or finished ids are ignored."""
    engine = _engine(tokens_per_s=STALLED)
    stream = engine.generate(ids("x"), SamplingSpec(max_tokens=5), "r")
    pending = asyncio.ensure_future(anext(stream))
    await _until_running(engine, 1)
    await engine.abort("r")
    first_time = engine.abort_times["r"]
    await engine.abort("r")
    assert engine.abort_times["r"] == first_time
    assert (await pending).finish_reason == "abort"
    await engine.abort("r")
    await engine.abort("nobody")
    assert list(engine.abort_times) == ["r"]
    await stream.aclose()


async def test_cancelling_the_consumer_unregisters_the_request() -> None:
    """Cancelling the consuming task leaves nothing running and records when it happened."""
    engine = _engine(tokens_per_s=STALLED)

    async def consume() -> list[EngineOutput]:
        return await _drain(engine.generate(ids("x"), SamplingSpec(max_tokens=5), "r"))

    task = asyncio.ensure_future(consume())
    await _until_running(engine, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.running() == 0
    assert list(engine.abort_times) == ["r"]
    await engine.abort("r")  # what the actor does next: a no-op now


async def test_duplicate_request_id_is_refused() -> None:
    """A request id that is still running cannot be reused."""
    engine = _engine(tokens_per_s=STALLED)
    first = engine.generate(ids("x"), SamplingSpec(max_tokens=5), "same")
    pending = asyncio.ensure_future(anext(first))
    await _until_running(engine, 1)
    with pytest.raises(EngineRequestError):
        await anext(engine.generate(ids("y"), SamplingSpec(max_tokens=5), "same"))
    await engine.abort("same")
    await pending
    await first.aclose()


async def test_close_aborts_everything() -> None:
    """close() aborts every running stream."""
    engine = _engine(tokens_per_s=STALLED)
    streams = [engine.generate(ids("x"), SamplingSpec(max_tokens=5), f"r{i}") for i in range(3)]
    pending = [asyncio.ensure_future(anext(s)) for s in streams]
    await _until_running(engine, 3)
    await engine.close()
    outputs = await asyncio.gather(*pending)
    assert {o.finish_reason for o in outputs} == {"abort"}
    assert engine.running() == 0
    assert sorted(engine.abort_times) == ["r0", "r1", "r2"]


async def test_many_concurrent_some_aborted() -> None:
    """Of 40 concurrent streams, the aborted end with abort, the rest finish; none remain."""
    engine = _engine(tokens_per_s=5000.0)
    request_ids = [f"r{i}" for i in range(40)]
    prompt, spec = ids("x"), SamplingSpec(max_tokens=30)
    tasks = {
        rid: asyncio.ensure_future(_drain(engine.generate(prompt, spec, rid)))
        for rid in request_ids
    }
    await _until_running(engine, len(request_ids))
    aborted = set(request_ids[::3])
    for rid in aborted:
        await engine.abort(rid)
    for rid, task in tasks.items():
        outputs = await task
        if rid in aborted:
            # The abort may land after the last token was already due; either ends the stream.
            assert outputs[-1].finish_reason in ("abort", "length")
        else:
            assert outputs[-1].finish_reason == "length"
            assert len(outputs) == 30
    assert engine.running() == 0


async def test_tokenizer_and_warm() -> None:
    """It uses the fake tokenizer and warms without compute, returning the prompt length."""
    engine = _engine()
    assert isinstance(engine.tokenizer, FakeTokenizer)
    assert await engine.warm(ids("abcd")) == 4
    assert engine.model_id == "bench:m"


async def test_late_close_keeps_a_newer_request_with_the_same_id() -> None:
    """Closing a finished stream late does not unregister a newer request reusing its id."""
    engine = _engine()
    old = engine.generate(ids("x"), SamplingSpec(max_tokens=1), "r")
    assert (await anext(old)).finished
    new = engine.generate(ids("x"), SamplingSpec(max_tokens=5), "r")
    await anext(new)
    assert engine.running() == 1
    await old.aclose()
    assert engine.running() == 1
    await new.aclose()
    assert engine.running() == 0


async def test_wait_idle_returns_once_nothing_runs() -> None:
    """wait_idle() blocks while a stream runs and returns after it ends."""
    engine = _engine(tokens_per_s=STALLED)
    stream = engine.generate(ids("x"), SamplingSpec(max_tokens=5), "r")
    pending = asyncio.ensure_future(anext(stream))
    await _until_running(engine, 1)
    idle = asyncio.ensure_future(engine.wait_idle())
    await asyncio.sleep(0)
    assert not idle.done()
    await engine.abort("r")
    await pending
    await asyncio.wait_for(idle, timeout=5.0)
    await stream.aclose()
