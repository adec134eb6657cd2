"""The transformers engine on the tiny random Qwen2: streaming, stops, aborts, caching."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from actors.engines.base import (
    EngineDeadError,
    EngineOutput,
    EngineRequestError,
    SamplingSpec,
)
from actors.engines.detokenize import IncrementalDetokenizer, StopMatcher, TextStream
from actors.engines.transformers_engine import PREFILL_CHUNK, TransformersEngine, _sample
from actors.models import ensure_tiny_model
from configs.schema import EngineConfig

GREEDY = SamplingSpec(max_tokens=24)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared by every test module in the session, so the model is built once.
    return tmp_path_factory.getbasetemp() / "tiny-models"


@pytest.fixture
async def engine(model_cache: Path) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine(EngineConfig(model="tiny-qwen2", model_cache_dir=str(model_cache)))
    await engine.start()
    yield engine
    await engine.close()


def chat(engine: TransformersEngine, text: str) -> list[int]:
    messages = [{"role": "user", "content": text}]
    rendered = engine.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    return ids_of(engine, rendered)


def ids_of(engine: TransformersEngine, text: str) -> list[int]:
    return engine.tokenizer.encode(text, add_special_tokens=False)


def long_prompt(engine: TransformersEngine) -> list[int]:
    # Greedy decoding of this prompt runs past 400 tokens without an eos.
    return chat(engine, "tell me something nice, number 0")


async def collect(
    engine: TransformersEngine, prompt: list[int], sampling: SamplingSpec, request_id: str = "r"
) -> list[EngineOutput]:
    return [out async for out in engine.generate(prompt, sampling, request_id)]


def joined(outputs: list[EngineOutput]) -> str:
    return "".join(out.text for out in outputs)


async def test_stream_matches_a_cache_free_reference(
    engine: TransformersEngine, model_cache: Path
) -> None:
    """Greedy deltas join to the decode of the ids a plain no-cache argmax loop picks."""
    prompt = long_prompt(engine)
    outputs = await collect(engine, prompt, GREEDY)

    model = AutoModelForCausalLM.from_pretrained(ensure_tiny_model(model_cache))
    ids = prompt
    banned = engine._state().banned
    generated: list[int] = []
    with torch.inference_mode():
        for _ in range(GREEDY.max_tokens):
            logits = model(input_ids=torch.tensor([ids + generated])).logits[0, -1]
            if banned is not None:  # the engine never samples vocabulary fillers
                logits = logits.masked_fill(banned, float("-inf"))
            generated.append(int(logits.argmax()))

    assert outputs[-1].finish_reason == "length"
    assert outputs[-1].completion_tokens == len(generated)
    assert outputs[-1].prompt_tokens == len(ids)
    assert all(out.finish_reason is None for out in outputs[:-1])
    assert joined(outputs) == engine.tokenizer.decode(generated, skip_special_tokens=True)


async def test_detokenizer_never_splits_characters(engine: TransformersEngine) -> None:
    """Deltas of a byte-split multibyte text hold no U+FFFD and join to the full decode."""
    tokenizer = engine.tokenizer
    ids = tokenizer.encode("héllo 👋 日本語 🎉 done", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push(token_id) for token_id in ids]
    deltas.append(detokenizer.flush())
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) == tokenizer.decode(ids)


async def test_detokenizer_flushes_broken_bytes_at_the_end(engine: TransformersEngine) -> None:
    """A stream cut inside a character still joins to the full (lossy) decode."""
    tokenizer = engine.tokenizer
    ids = tokenizer.encode("ok 👋", add_special_tokens=False)[:-1]
    detokenizer = IncrementalDetokenizer(tokenizer)
    text = "".join(detokenizer.push(token_id) for token_id in ids)
    assert "\ufffd" not in text
    assert text + detokenizer.flush() == tokenizer.decode(ids)


async def test_greedy_is_deterministic(engine: TransformersEngine) -> None:
    """Two greedy runs of one prompt give the same text."""
    prompt = long_prompt(engine)
    first = await collect(engine, prompt, GREEDY)
    second = await collect(engine, prompt, GREEDY)
    assert joined(first) == joined(second)
    assert first[-1] == second[-1]


async def test_seeded_sampling_repeats(engine: TransformersEngine) -> None:
    """Sampling with a seed repeats itself; top_k=1 is greedy."""
    prompt = long_prompt(engine)
    spec = SamplingSpec(max_tokens=24, temperature=1.0, top_p=0.9, min_p=0.01, seed=7)
    first = await collect(engine, prompt, spec)
    second = await collect(engine, prompt, spec)
    assert joined(first) == joined(second)
    greedy = await collect(engine, prompt, GREEDY)
    top1 = await collect(engine, prompt, SamplingSpec(max_tokens=24, temperature=1.0, top_k=1))
    assert joined(top1) == joined(greedy)


async def test_max_tokens_finishes_with_length(engine: TransformersEngine) -> None:
    """A stream stops after max_tokens tokens with reason "length"."""
    outputs = await collect(engine, long_prompt(engine), SamplingSpec(max_tokens=5))
    assert outputs[-1].finish_reason == "length"
    assert outputs[-1].completion_tokens == 5
    assert engine.running() == 0


async def test_ignore_eos_runs_to_max_tokens(engine: TransformersEngine) -> None:
    """With every token an eos a request stops after one token; ignore_eos runs it to
    max_tokens all the same."""
    state = engine._state()
    engine._loaded = dataclasses.replace(state, eos_ids=frozenset(range(state.vocab_size)))
    prompt = long_prompt(engine)
    stopped = await collect(engine, prompt, SamplingSpec(max_tokens=5))
    assert (stopped[-1].finish_reason, stopped[-1].completion_tokens) == ("stop", 1)
    ran = await collect(engine, prompt, SamplingSpec(max_tokens=5, ignore_eos=True))
    assert (ran[-1].finish_reason, ran[-1].completion_tokens) == ("length", 5)


async def test_stop_string_cuts_the_output(engine: TransformersEngine) -> None:
    """Text from the first stop string on is never emitted, and the reason is "stop"."""
    prompt = long_prompt(engine)
    full = joined(await collect(engine, prompt, SamplingSpec(max_tokens=40)))
    stop = full[20:24]
    expected = full[: full.find(stop)]
    outputs = await collect(engine, prompt, SamplingSpec(max_tokens=40, stop=("\x00", stop)))
    assert outputs[-1].finish_reason == "stop"
    assert joined(outputs) == expected


def test_stop_matcher_holds_back_possible_starts() -> None:
    """A suffix that may begin a stop string waits for the next delta."""
    matcher = StopMatcher(("END",))
    assert matcher.push("abcE") == ("abc", False)
    assert matcher.push("Nx") == ("ENx", False)
    assert matcher.push("yyEN") == ("yy", False)
    assert matcher.push("D tail") == ("", True)
    assert matcher.flush() == ""


async def test_abort_ends_the_stream(engine: TransformersEngine) -> None:
    """Aborting mid-stream (twice) ends it with one final "abort" output and nothing left."""
    stream = engine.generate(long_prompt(engine), SamplingSpec(max_tokens=400), "a1")
    async with aclosing(stream):
        first = await anext(stream)
        assert not first.finished
        await engine.abort("a1")
        await engine.abort("a1")
        rest = [out async for out in stream]
    assert [out.finish_reason for out in rest] == ["abort"]
    assert rest[0].text == ""
    assert engine.running() == 0
    await engine.abort("a1")


async def test_cancelling_the_consumer_aborts(engine: TransformersEngine) -> None:
    """Cancelling the consuming task re-raises CancelledError and frees the request."""
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(long_prompt(engine), SamplingSpec(max_tokens=400), "c1"):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.running() == 0
    after = await collect(engine, long_prompt(engine), SamplingSpec(max_tokens=3), "c1")
    assert after[-1].finish_reason == "length"


async def test_concurrent_requests_all_finish(engine: TransformersEngine) -> None:
    """Eight requests run interleaved, each ends with a finish reason, none is left."""
    seen_running: list[int] = []

    async def one(index: int) -> EngineOutput:
        prompt = chat(engine, f"tell me something nice, number {index}")
        last = None
        async for out in engine.generate(prompt, SamplingSpec(max_tokens=16), f"n{index}"):
            seen_running.append(engine.running())
            last = out
        assert last is not None
        return last

    finals = await asyncio.gather(*(one(i) for i in range(8)))
    assert all(final.finish_reason in ("stop", "length") for final in finals)
    assert max(seen_running) == 8
    assert engine.running() == 0


async def test_warm_prefix_is_reused(engine: TransformersEngine) -> None:
    """After warm, a prompt extending it reports cached tokens and generates the same text."""
    persona = chat(engine, "You are June, wholesome and kind.")
    prompt = persona + ids_of(
        engine, "<|im_start|>user\nhey there<|im_end|>\n<|im_start|>assistant\n"
    )
    cold = await collect(engine, prompt, GREEDY)
    assert cold[-1].cached_tokens == 0
    warmed = await engine.warm(persona)
    assert warmed == len(persona)
    assert engine.running() == 0
    hot = await collect(engine, prompt, GREEDY)
    assert hot[-1].cached_tokens == warmed
    assert joined(hot) == joined(cold)
    again = await collect(engine, persona, GREEDY)
    assert again[-1].cached_tokens == warmed - 1


async def test_cancelled_warm_keeps_what_it_prefilled(engine: TransformersEngine) -> None:
    """A warm request cancelled after its first prefill chunk leaves that chunk cached."""
    words = " ".join(f"word{i}" for i in range(700))
    prefix = chat(engine, words)
    assert len(prefix) > 2 * PREFILL_CHUNK
    first_chunk_done = asyncio.Event()
    forward = engine._forward

    def forward_then_signal(*args: object) -> None:
        forward(*args)  # type: ignore[arg-type]
        engine._loop.call_soon_threadsafe(first_chunk_done.set)

    engine._loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
    engine._forward = forward_then_signal  # type: ignore[method-assign]
    warm = asyncio.create_task(engine.warm(prefix, request_id="w1"))
    await first_chunk_done.wait()
    assert engine.running() == 1
    warm.cancel()
    with pytest.raises(asyncio.CancelledError):
        await warm
    engine._forward = forward  # type: ignore[method-assign]
    assert engine.running() == 0
    outputs = await collect(engine, prefix, SamplingSpec(max_tokens=1))
    # The first chunk, or the second too if it was under way: whole chunks, not all.
    assert outputs[-1].cached_tokens in (PREFILL_CHUNK, 2 * PREFILL_CHUNK)


async def test_aborted_warm_stops_between_chunks(engine: TransformersEngine) -> None:
    """abort() of a warm request's id ends it after its current chunk, keeping what it did."""
    prefix = chat(engine, " ".join(f"item{i}" for i in range(700)))
    started = asyncio.Event()
    forward = engine._forward
    loop = asyncio.get_running_loop()

    def forward_then_signal(*args: object) -> None:
        forward(*args)  # type: ignore[arg-type]
        loop.call_soon_threadsafe(started.set)

    engine._forward = forward_then_signal  # type: ignore[method-assign]
    warm = asyncio.create_task(engine.warm(prefix, request_id="w2"))
    await started.wait()
    await engine.abort("w2")
    done = await warm
    engine._forward = forward  # type: ignore[method-assign]
    assert PREFILL_CHUNK <= done < len(prefix)
    assert engine.running() == 0


async def test_fillers_are_never_sampled(engine: TransformersEngine) -> None:
    """The tiny tokenizer's <|reserved_N|> padding never streams, even sampled hot."""
    state = engine._state()
    assert state.banned is not None
    reserved = engine.tokenizer.convert_tokens_to_ids("<|reserved_0|>")
    assert bool(state.banned[reserved])
    assert not bool(state.banned[engine.tokenizer.eos_token_id])
    # A filler with the highest logit is still not picked, greedy or sampled.
    logits = torch.zeros(state.vocab_size)
    logits[reserved] = 100.0
    seen = torch.zeros(state.vocab_size, dtype=torch.bool)
    hot = SamplingSpec(max_tokens=1, temperature=1.5, seed=1)
    assert _sample(logits, seen, GREEDY, None, state.banned) != reserved
    generator = torch.Generator().manual_seed(3)
    assert _sample(logits, seen, hot, generator, state.banned) != reserved
    # A long sampled reply of the random model (many fillers without the mask).
    outputs = await collect(
        engine, long_prompt(engine), SamplingSpec(max_tokens=300, temperature=1.5, seed=5)
    )
    assert "<|reserved_" not in joined(outputs)


def test_text_stream_cuts_at_a_stop_string_across_tokens(engine: TransformersEngine) -> None:
    """TextStream holds back a possible stop string and never emits any of it."""
    tokenizer = engine.tokenizer
    ids = tokenizer.encode("hello there, User: again", add_special_tokens=False)
    stream = TextStream(tokenizer, ("User:",))
    text = "".join(stream.push([token]) for token in ids)
    assert stream.stopped
    assert text + stream.finish() == "hello there, "


async def test_too_long_request_is_refused(engine: TransformersEngine) -> None:
    """A prompt that with max_tokens exceeds the model's positions raises EngineRequestError."""
    with pytest.raises(EngineRequestError, match="positions"):
        await collect(engine, ids_of(engine, "hi"), SamplingSpec(max_tokens=9000))
    with pytest.raises(EngineRequestError, match="positions"):
        await engine.warm(ids_of(engine, "hi " * 9000))
    assert engine.running() == 0


async def test_duplicate_running_id_is_refused(engine: TransformersEngine) -> None:
    """A second stream with a running request's id raises EngineRequestError."""
    stream = engine.generate(long_prompt(engine), SamplingSpec(max_tokens=400), "d1")
    async with aclosing(stream):
        await anext(stream)
        with pytest.raises(EngineRequestError, match="already running"):
            await collect(engine, ids_of(engine, "hi"), GREEDY, "d1")
        await engine.abort("d1")
        assert [out.finish_reason async for out in stream] == ["abort"]
    assert engine.running() == 0


async def test_close_aborts_and_refuses_new_work(engine: TransformersEngine) -> None:
    """Closing ends running streams with "abort"; later requests raise EngineDeadError."""
    stream = engine.generate(long_prompt(engine), SamplingSpec(max_tokens=400), "x1")
    async with aclosing(stream):
        await anext(stream)
        await engine.close()
        assert [out.finish_reason async for out in stream] == ["abort"]
    assert engine.running() == 0
    with pytest.raises(EngineDeadError):
        await collect(engine, ids_of(engine, "hi"), GREEDY)
