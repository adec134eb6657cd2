"""VllmEngine's streaming on a scripted stand-in for vLLM's AsyncLLM (no vLLM, no GPU).

What the engine hands vLLM (token ids as a TokensInput, ids-only sampling, the
priority) and what it makes of vLLM's outputs (text decoded from ids, the stop token
left out, stop strings matched here and the request aborted, cleanup) are checked
against vLLM 0.26.0's shapes: ``AsyncLLM.generate(prompt, sampling_params,
request_id, *, priority)`` yields ``RequestOutput``s whose ``outputs[0]`` carries the
delta ``token_ids``, ``finish_reason`` and ``stop_reason``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from actors.engines.base import EngineStamps, SamplingSpec
from actors.engines.vllm_engine import VllmEngine, _Vllm, engine_stamps
from actors.engines.vocab import MAX_ALLOWED_IDS, sampleable_ids
from actors.models import ensure_tiny_model
from configs.schema import ChatConfig


@dataclasses.dataclass
class _Completion:
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    text: str = ""  # detokenize=False: vLLM leaves it empty


@dataclasses.dataclass
class _Stats:
    """vLLM's ``RequestStateStats``: the engine core's monotonic stamps."""

    queued_ts: float = 10.0
    scheduled_ts: float = 10.5
    first_token_ts: float = 11.0


@dataclasses.dataclass
class _Output:
    outputs: list[_Completion]
    finished: bool
    num_cached_tokens: int = 0
    metrics: _Stats | None = dataclasses.field(default_factory=_Stats)


class _Params:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class _Dead(Exception):
    pass


class _GenerateError(Exception):
    pass


class FakeLLM:
    """Yields scripted deltas; records requests and aborts like AsyncLLM's surface."""

    def __init__(self, script: list[_Completion], cached: int = 0) -> None:
        self.script = script
        self.cached = cached
        self.requests: list[dict[str, Any]] = []
        self.aborts: list[str] = []
        self.closed_early: list[str] = []
        self.errored = False

    async def generate(
        self, prompt: dict[str, Any], params: _Params, request_id: str, *, priority: int = 0
    ) -> AsyncIterator[_Output]:
        self.requests.append({"prompt": prompt, "params": params.kwargs, "priority": priority})
        try:
            for index, completion in enumerate(self.script):
                await asyncio.sleep(0)  # a step: abort() may land in between
                if request_id in self.aborts:
                    yield _Output([_Completion([], "abort")], True, self.cached)
                    return
                finished = completion.finish_reason is not None
                yield _Output([completion], finished, self.cached if index == 0 else 0)
        except GeneratorExit:
            self.closed_early.append(request_id)
            raise

    async def abort(self, request_id: str | list[str]) -> None:
        self.aborts.extend([request_id] if isinstance(request_id, str) else request_id)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = tmp_path_factory.getbasetemp() / "tiny-models"  # shared with the engine tests
    return AutoTokenizer.from_pretrained(ensure_tiny_model(Path(cache)))


def engine_on(llm: FakeLLM, tokenizer: Any, **config: Any) -> VllmEngine:
    engine = VllmEngine(ChatConfig(backend="vllm", model="m", **config), gpu_frac=0.5)
    engine._tokenizer = tokenizer
    engine._vllm = _Vllm(
        llm=llm,  # type: ignore[arg-type]
        sampling_params=_Params,
        delta="DELTA",
        tokens_input=lambda ids: {"type": "token", "prompt_token_ids": ids},
        dead_error=_Dead,
        generate_error=_GenerateError,
    )
    return engine


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


async def test_hands_vllm_token_ids_and_decodes_the_reply(tokenizer: Any) -> None:
    """The prompt goes as a TokensInput of our ids, ids-only, at our priority; the reply's
    ids come back as text, the eos that stopped it left out."""
    reply = ids(tokenizer, "Sure, give me a second.")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    script = [_Completion(reply[:3]), _Completion(reply[3:]), _Completion([eos], "stop")]
    llm = FakeLLM(script, cached=12)
    engine = engine_on(llm, tokenizer)
    prompt = ids(tokenizer, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    outputs = [o async for o in engine.generate(prompt, SamplingSpec(max_tokens=20), "r1", 3)]
    (request,) = llm.requests
    assert request["prompt"] == {"type": "token", "prompt_token_ids": prompt}
    assert request["priority"] == 3
    assert request["params"]["detokenize"] is False
    assert request["params"]["output_kind"] == "DELTA"
    assert "stop" not in request["params"] and "allowed_token_ids" not in request["params"]
    assert "".join(o.text for o in outputs) == "Sure, give me a second."
    assert outputs[-1].finish_reason == "stop"
    assert outputs[-1].completion_tokens == len(reply) + 1
    assert outputs[0].cached_tokens == 12 and outputs[0].prompt_tokens == len(prompt)
    # vLLM finished the request: its generator ran to its end, nothing was aborted.
    assert llm.aborts == [] and llm.closed_early == []
    assert engine.running() == 0


async def test_the_first_output_carries_the_engine_cores_stamps(tokenizer: Any) -> None:
    """Where the wait for the first token went, as vLLM's stats say: on the first
    output only, so a turn's stamps are its first token's."""
    reply = ids(tokenizer, "Sure, give me a second.")
    script = [_Completion([]), _Completion(reply[:3]), _Completion(reply[3:], "length")]
    engine = engine_on(FakeLLM(script), tokenizer)
    outputs = [o async for o in engine.generate([1, 2], SamplingSpec(max_tokens=20), "r1")]
    assert len(outputs) == 2  # the empty first delta yields nothing
    assert outputs[0].stamps == EngineStamps(queued=10.0, scheduled=10.5, first_token=11.0)
    assert outputs[1].stamps is None
    assert engine_stamps(None) is None  # vLLM with disable_log_stats keeps none


async def test_stop_string_ends_the_request_here(tokenizer: Any) -> None:
    """A stop string (which vLLM never sees) cuts the text before it and aborts vLLM's
    request; nothing after it is emitted."""
    reply = ids(tokenizer, "hello there\nUser: more text after")
    script = [_Completion([token]) for token in reply] + [_Completion([], "length")]
    llm = FakeLLM(script)
    engine = engine_on(llm, tokenizer)
    spec = SamplingSpec(max_tokens=50, stop=("\nUser:",))
    outputs = [o async for o in engine.generate([1, 2, 3], spec, "r2")]
    assert "".join(o.text for o in outputs) == "hello there"
    assert outputs[-1].finish_reason == "stop"
    assert llm.aborts == ["r2"]
    assert llm.closed_early == ["r2"]  # its stream was closed, not left behind
    assert engine.running() == 0


async def test_length_keeps_every_token(tokenizer: Any) -> None:
    """A reply cut by max_tokens keeps its last token (only a stop token is dropped)."""
    reply = ids(tokenizer, "one two three")
    llm = FakeLLM([_Completion(reply[:-1]), _Completion(reply[-1:], "length")])
    engine = engine_on(llm, tokenizer)
    outputs = [o async for o in engine.generate([1], SamplingSpec(max_tokens=len(reply)), "r3")]
    assert "".join(o.text for o in outputs) == "one two three"
    assert outputs[-1].finish_reason == "length"


async def test_consumer_leaving_early_aborts(tokenizer: Any) -> None:
    """Closing the stream after the first delta aborts the request in vLLM."""
    reply = ids(tokenizer, "a long answer that goes on")
    llm = FakeLLM([_Completion([token]) for token in reply] + [_Completion([], "length")])
    engine = engine_on(llm, tokenizer)
    stream = engine.generate([1], SamplingSpec(max_tokens=50), "r4")
    first = await anext(stream)
    assert first.text and first.finish_reason is None
    await stream.aclose()
    assert llm.aborts == ["r4"] and llm.closed_early == ["r4"]
    assert engine.running() == 0


async def test_warm_runs_one_token_behind_turns(tokenizer: Any) -> None:
    """warm() is a one-token request one priority step behind the configured one."""
    llm = FakeLLM([_Completion([5], "length")])
    engine = engine_on(llm, tokenizer, priority=2)
    assert await engine.warm([7, 8, 9], request_id="warm-x") == 3
    (request,) = llm.requests
    assert request["priority"] == 3
    assert request["params"]["max_tokens"] == 1
    assert request["prompt"]["prompt_token_ids"] == [7, 8, 9]
    assert await engine.warm([]) == 0


async def test_random_models_sample_clean_trained_tokens(tokenizer: Any) -> None:
    """A random-weight model's requests carry allowed_token_ids: at most vLLM's V2
    runner limit of trained tokens that decode to whole text, no fillers."""
    llm = FakeLLM([_Completion([5], "length")])
    engine = engine_on(llm, tokenizer)
    engine._allowed_ids = sampleable_ids(tokenizer)
    _ = [o async for o in engine.generate([1], SamplingSpec(max_tokens=1), "r5")]
    allowed = llm.requests[0]["params"]["allowed_token_ids"]
    assert 500 < len(allowed) <= MAX_ALLOWED_IDS == 1024
    reserved = tokenizer.convert_tokens_to_ids("<|reserved_0|>")
    assert reserved not in allowed and tokenizer.eos_token_id not in allowed
    assert all("\ufffd" not in tokenizer.decode([i]) for i in allowed)


def test_padded_gpu_tokenizer_has_enough_clean_tokens() -> None:
    """The GPU benchmark's 128k padded tokenizer yields the full 1,024 sampleable ids,
    none of them a filler."""
    from actors.models.gpu import FILLER_TOKEN, build_tokenizer

    tokenizer = build_tokenizer(128256)
    allowed = sampleable_ids(tokenizer)
    assert len(allowed) == MAX_ALLOWED_IDS
    prefix = FILLER_TOKEN.split("{")[0]
    assert not any(tokenizer.convert_ids_to_tokens(i).startswith(prefix) for i in allowed)
