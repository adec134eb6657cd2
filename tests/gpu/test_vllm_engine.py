"""VllmEngine on a real GPU: streaming, abort, cancellation, two engines, prefix cache.

Skipped unless CUDA and vLLM are both there. The models default to random-weight
checkpoints in the real shapes (``random:<shape>``, generated on first use under
``YAP_MODEL_CACHE``); ``YAP_GPU_TOOL_MODEL`` and ``YAP_GPU_CHAT_MODEL`` name others.
Both engines start once per module, one after the other, as the actors do: the tool
engine at 0.20 of the GPU's memory, the chat engine at 0.70, fp8 weights and KV.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")
pytest_asyncio = pytest.importorskip("pytest_asyncio")

from actors.engines.base import EngineOutput, EngineRequestError, SamplingSpec  # noqa: E402
from actors.engines.vllm_engine import VllmEngine  # noqa: E402
from actors.prompts.chat import ChatPrompts, build_chat_prompt, persona_warm_prompt  # noqa: E402
from actors.prompts.hammer import build_tool_prompt  # noqa: E402
from actors.prompts.units import UnitEncoder  # noqa: E402
from bus.history import append_turn  # noqa: E402
from configs.schema import ChatConfig, ToolConfig  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
    pytest.mark.asyncio(loop_scope="module"),
    # Starting two engines (compile, CUDA graphs) takes a minute or two.
    pytest.mark.timeout(900),
]

TOOL_MODEL = os.environ.get("YAP_GPU_TOOL_MODEL", "random:qwen2.5-1.5b")
CHAT_MODEL = os.environ.get("YAP_GPU_CHAT_MODEL", "random:llama-3.1-8b")
MODEL_CACHE = os.environ.get("YAP_MODEL_CACHE", "~/.cache/yap-bus")
# Random weights: sample at temperature 1 so streams run long instead of looping.
LONG = SamplingSpec(max_tokens=2000, temperature=1.0, seed=1)
PERSONA = (
    "You are June, a warm and curious companion in a live voice conversation. "
    "Keep answers short, speak naturally, and ask something back now and then. "
) * 24


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines() -> AsyncIterator[tuple[VllmEngine, VllmEngine]]:
    """The tool engine (0.20) and the chat engine (0.70), started one after the other."""
    tool = VllmEngine(
        ToolConfig(backend="vllm", model=TOOL_MODEL, model_cache_dir=MODEL_CACHE, kv_dtype="fp8"),
        gpu_frac=0.20,
    )
    chat = VllmEngine(
        ChatConfig(backend="vllm", model=CHAT_MODEL, model_cache_dir=MODEL_CACHE, kv_dtype="fp8"),
        gpu_frac=0.70,
    )
    try:
        await tool.start()
        await chat.start()
        yield tool, chat
    finally:
        await chat.close()
        await tool.close()


@pytest.fixture
def tool(engines: tuple[VllmEngine, VllmEngine]) -> VllmEngine:
    return engines[0]


@pytest.fixture
def chat(engines: tuple[VllmEngine, VllmEngine]) -> VllmEngine:
    return engines[1]


def ids(engine: VllmEngine, text: str) -> list[int]:
    return engine.tokenizer.encode(text, add_special_tokens=False)


def chat_prompt(engine: VllmEngine, utterance: str, persona: str = PERSONA) -> list[int]:
    text = build_chat_prompt(
        engine.tokenizer, persona_text=persona, history_text="", user_utterance=utterance
    ).text
    return ids(engine, text)


def tool_prompt(engine: VllmEngine, utterance: str) -> list[int]:
    return ids(engine, build_tool_prompt(engine.tokenizer, user_utterance=utterance))


async def collect(
    engine: VllmEngine, prompt: list[int], sampling: SamplingSpec, request_id: str
) -> list[EngineOutput]:
    return [out async for out in engine.generate(prompt, sampling, request_id)]


async def settled(engine: VllmEngine) -> None:
    """Assert nothing is left running, here or in vLLM (aborts reach its core async)."""
    for _ in range(50):
        if engine.running() == 0 and engine.unfinished_in_vllm() == 0:
            return
        await asyncio.sleep(0.02)
    assert engine.running() == 0
    assert engine.unfinished_in_vllm() == 0


async def test_chat_streams_deltas(chat: VllmEngine) -> None:
    """A chat turn streams text deltas; counts are cumulative and the last has a reason."""
    prompt = chat_prompt(chat, "hey, how was your day?")
    outputs = await collect(chat, prompt, SamplingSpec(max_tokens=32, temperature=1.0), "s1")
    assert len(outputs) > 1
    assert all(out.finish_reason is None for out in outputs[:-1])
    assert outputs[-1].finish_reason in ("length", "stop")
    assert outputs[-1].completion_tokens <= 32
    assert outputs[-1].prompt_tokens == len(prompt)
    assert "".join(out.text for out in outputs)
    await settled(chat)


async def test_tool_prompt_greedy_is_repeatable(tool: VllmEngine) -> None:
    """The Hammer prompt runs through vLLM, its fixed head is reused from the prefix cache,
    and greedy decoding over the same cached prefix gives the same text twice."""
    prompt = tool_prompt(tool, "can you look at my screen?")
    greedy = SamplingSpec(max_tokens=10)
    # Random weights leave near-ties that flip with the prefill's shape, so both compared
    # runs start from the same cached prefix: the first run only fills the cache.
    await collect(tool, prompt, greedy, "t0")
    first = await collect(tool, prompt, greedy, "t1")
    second = await collect(tool, prompt, greedy, "t2")
    assert "".join(o.text for o in first) == "".join(o.text for o in second)
    assert first[-1].completion_tokens == 10 or first[-1].finish_reason == "stop"
    assert first[0].cached_tokens > first[0].prompt_tokens - 32
    other = tool_prompt(tool, "tell me a joke about penguins")
    fresh = await collect(tool, other, greedy, "t3")
    # The task, tools and format sections come first and are shared by every turn.
    assert fresh[0].cached_tokens >= 256
    await settled(tool)


async def test_stop_string_cuts_the_text(chat: VllmEngine) -> None:
    """A stop string taken from a greedy answer ends the same answer right before it."""
    prompt = chat_prompt(chat, "tell me a story")
    greedy = SamplingSpec(max_tokens=24)
    await collect(chat, prompt, greedy, "g0")  # fills the prefix cache (see above)
    full = "".join(o.text for o in await collect(chat, prompt, greedy, "g1"))
    stop = full[len(full) // 2 : len(full) // 2 + 6]
    if len(full) < 12 or not stop.strip():
        pytest.skip(f"greedy answer too short to cut: {full!r}")
    cut = await collect(chat, prompt, SamplingSpec(max_tokens=24, stop=(stop,)), "g2")
    assert "".join(o.text for o in cut) == full[: full.index(stop)]
    assert cut[-1].finish_reason == "stop"


async def test_abort_mid_stream_leaves_nothing_running(chat: VllmEngine) -> None:
    """abort() ends the stream with an "abort" output and vLLM keeps no request."""
    outputs: list[EngineOutput] = []
    async for out in chat.generate(chat_prompt(chat, "talk to me"), LONG, "a1"):
        outputs.append(out)
        if len(outputs) == 3:
            await chat.abort("a1")
            await chat.abort("a1")  # idempotent
    assert outputs[-1].finish_reason == "abort"
    assert outputs[-1].completion_tokens < LONG.max_tokens
    await settled(chat)
    await chat.abort("a1")  # finished ids are ignored


async def test_cancelling_the_consumer_aborts(chat: VllmEngine) -> None:
    """Cancelling the task that reads a stream aborts the request inside vLLM."""
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in chat.generate(chat_prompt(chat, "keep talking"), LONG, "c1"):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 60)
    assert chat.running() == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await settled(chat)


async def test_closing_the_stream_early_aborts(chat: VllmEngine) -> None:
    """A consumer that stops reading and closes the stream aborts the request too."""
    stream = chat.generate(chat_prompt(chat, "and then?"), LONG, "e1")
    async with contextlib.aclosing(stream):
        async for _ in stream:
            break
    await settled(chat)


async def test_concurrent_requests_with_cancellations(chat: VllmEngine) -> None:
    """Of 24 concurrent streams, a third are cancelled; the rest finish; nothing leaks."""
    sampling = SamplingSpec(max_tokens=48, temperature=1.0)
    prompt = chat_prompt(chat, "what's up?")

    async def run(i: int) -> str | None:
        async for out in chat.generate(prompt, sampling, f"m{i}"):
            if out.finish_reason is not None:
                return out.finish_reason
        return None

    tasks = [asyncio.create_task(run(i)) for i in range(24)]
    await asyncio.sleep(0.3)
    for task in tasks[::3]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 3:
            assert result in ("length", "stop"), result
        else:
            assert isinstance(result, asyncio.CancelledError) or result in ("length", "stop")
    await settled(chat)


async def test_two_engines_serve_at_once(tool: VllmEngine, chat: VllmEngine) -> None:
    """Tool and chat engines, co-resident on one GPU, stream at the same time."""
    screen = tool_prompt(tool, "what's on my screen?")
    tool_out, chat_out = await asyncio.gather(
        collect(tool, screen, SamplingSpec(max_tokens=10), "both-t"),
        collect(
            chat, chat_prompt(chat, "hi"), SamplingSpec(max_tokens=40, temperature=1.0), "both-c"
        ),
    )
    assert tool_out[-1].finish_reason in ("length", "stop")
    assert chat_out[-1].finish_reason in ("length", "stop")
    await settled(tool)
    await settled(chat)


async def test_warm_persona_is_a_prefix_cache_hit(chat: VllmEngine) -> None:
    """After warm(persona), the next turn with that persona reads it from the cache."""
    persona = "You are Rex, blunt and funny, fond of old films and bad puns. " * 30
    warm_ids = ids(chat, persona_warm_prompt(chat.tokenizer, persona))
    warmed = await chat.warm(warm_ids)
    assert warmed == len(warm_ids)
    assert warmed > 256
    outputs = await collect(
        chat, chat_prompt(chat, "hello again", persona), SamplingSpec(max_tokens=4), "w1"
    )
    # Whole KV blocks of the warm prompt are reused (block size 16 or so).
    assert outputs[0].cached_tokens >= warmed - 64
    cold = await collect(
        chat,
        chat_prompt(chat, "hello", "A different persona entirely. " * 40),
        SamplingSpec(max_tokens=4),
        "w2",
    )
    assert cold[0].cached_tokens < 64
    await settled(chat)


async def test_prompt_over_max_len_fails_only_that_request(tool: VllmEngine) -> None:
    """A prompt longer than max_model_len is a request error; the engine keeps serving."""
    too_long = ids(tool, "word " * 8000)
    with pytest.raises(EngineRequestError):
        await collect(tool, too_long, SamplingSpec(max_tokens=2), "long")
    hi = ids(tool, "<|im_start|>user\nhi<|im_end|>\n")
    ok = await collect(tool, hi, SamplingSpec(max_tokens=2), "ok")
    assert ok[-1].finish_reason in ("length", "stop")
    await settled(tool)


async def test_next_turn_warm_is_a_prefix_cache_hit(chat: VllmEngine) -> None:
    """Warming the next turn's prefix (history + this exchange) makes the next turn read
    all but its utterance from the cache: what the chat actor does between turns."""
    prompts = ChatPrompts(UnitEncoder(chat.tokenizer))
    history = "\n".join(
        f"User: question {i} about the garden?\nAssistant: answer {i}." for i in range(40)
    )
    history = append_turn(history, "and the roses?", "They need sun, water and patience.")
    warm_ids = await prompts.history_prefix(persona_text=PERSONA, history_text=history)
    assert await chat.warm(warm_ids) == len(warm_ids)
    turn = await prompts.turn(persona_text=PERSONA, history_text=history, user_utterance="ok!")
    assert turn[: len(warm_ids)] == warm_ids
    outputs = await collect(chat, turn, SamplingSpec(max_tokens=4), "next1")
    # Whole KV blocks of the warm prompt (16 tokens or so) are reused.
    assert outputs[0].cached_tokens >= len(warm_ids) - 32
    await settled(chat)


async def test_stop_string_is_matched_on_our_side(chat: VllmEngine) -> None:
    """With detokenize=False vLLM never sees our stop strings; the engine cuts the text
    there and ends the request, which leaves nothing running."""
    prompt = chat_prompt(chat, "count with me")
    greedy = SamplingSpec(max_tokens=16)
    await collect(chat, prompt, greedy, "s0")  # fills the prefix cache (see above)
    full = "".join(o.text for o in await collect(chat, prompt, greedy, "s1"))
    if len(full) < 8:
        pytest.skip(f"greedy answer too short to cut: {full!r}")
    stop = full[4:7]
    cut = await collect(chat, prompt, SamplingSpec(max_tokens=16, stop=(stop,)), "s2")
    assert "".join(o.text for o in cut) == full[: full.index(stop)]
    assert cut[-1].finish_reason == "stop" and cut[-1].completion_tokens < 16
    await settled(chat)
