"""An engine on Hugging Face ``transformers``: CPU-friendly, one request per model step.

Each request runs its own decode loop with a KV cache: prefill in chunks, then one
token per step. Every model call runs on one single-worker executor owned by the
engine, so concurrent requests take turns step by step, torch never runs two forwards
at once, and the event loop stays free for I/O. Between steps a request checks its
abort flag, which makes ``abort`` take effect within one step.

Prompts are matched against a small LRU of prefilled prefixes (filled by ``warm``);
a hit copies that KV cache and prefills only the rest of the prompt. A warm request
that is cancelled or aborted keeps what it prefilled by then, as vLLM keeps the KV
blocks of an aborted request in its prefix cache.

Sampling never picks a vocabulary filler: ids past the tokenizer's end and padding
tokens such as the tiny model's ``<|reserved_N|>`` are masked out of the logits, so
the CPU default streams no filler names.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import inspect
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from actors.engines.base import (
    EngineDeadError,
    EngineError,
    EngineOutput,
    EngineRequestError,
    EngineStamps,
    FinishReason,
    SamplingSpec,
)
from actors.engines.detokenize import IncrementalDetokenizer, StopMatcher, TextStream
from actors.engines.vocab import filler_ids
from configs.schema import EngineConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["IncrementalDetokenizer", "StopMatcher", "TransformersEngine"]

# How many warmed prefixes keep their KV cache; each holds a full prompt's keys/values.
PREFIX_CACHE_ENTRIES = 8
# Prompt tokens per prefill step: long prompts are split so that one request's
# prefill does not stall every other request's next token for long.
PREFILL_CHUNK = 512
# Token strings that end a turn in ChatML-style models, besides the tokenizer's eos.
EOS_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")
WARM_ID_PREFIX = "warm-"

_T = TypeVar("_T")


@dataclasses.dataclass(eq=False)
class _Request:
    """The loop side of one request; ``aborted`` is read between steps."""

    request_id: str
    aborted: bool = False


@dataclasses.dataclass(eq=False)
class _Sequence:
    """The worker side of one request: touched only on the engine's executor thread."""

    cache: Any  # transformers DynamicCache
    # Tokens seen so far (prompt and output), for the repetition penalty.
    seen: torch.Tensor
    generator: torch.Generator | None
    logits: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class _Loaded:
    """What ``start`` loads; replaced as a whole, never mutated."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    eos_ids: frozenset[int]
    max_positions: int
    vocab_size: int
    # True for ids sampling must never pick (fillers); None when there are none.
    banned: torch.Tensor | None
    # The forward() keyword for the KV cache: "cache" in transformers 5, the older
    # "past_key_values" before.
    cache_kwarg: str


class TransformersEngine:
    """The ``Engine`` on a local ``transformers`` causal LM.

    Args:
        config: ``model`` is a ``tiny-*`` name (built locally by ``ensure_tiny_model``),
            a local directory or a hub id; ``device`` and ``cpu_threads`` place it.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.model_id = config.model
        self._config = config
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"engine-{config.model}",
            # Torch's intra-op thread count is per calling thread under OpenMP, so it is
            # set on the thread that runs the model.
            initializer=_set_torch_threads,
            initargs=(config.cpu_threads,),
        )
        self._loaded: _Loaded | None = None
        self._closed = False
        self._requests: dict[str, _Request] = {}
        # Touched only on the executor thread.
        self._prefixes: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._state().tokenizer

    async def start(self) -> None:
        """Load the model and tokenizer (building the tiny model if needed)."""
        if self._loaded is None:
            self._loaded = await self._call(self._load)

    def running(self) -> int:
        return len(self._requests)

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingSpec,
        request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[EngineOutput]:
        """Stream deltas for ``prompt_ids``; ``priority`` is ignored (steps run in FIFO order).

        Raises:
            EngineRequestError: duplicate running id, bad sampling, prompt too long,
                or the model failed on this request.
            EngineDeadError: the engine is closed.
        """
        state = self._state()
        if request_id in self._requests:
            raise EngineRequestError(f"request id {request_id!r} is already running")
        _check_sampling(sampling)
        request = _Request(request_id)
        self._requests[request_id] = request
        try:
            async for output in self._run(state, request, list(prompt_ids), sampling):
                yield output
        except asyncio.CancelledError:
            request.aborted = True
            raise
        finally:
            # GeneratorExit (the consumer closed the stream) lands here too.
            request.aborted = True
            if self._requests.get(request_id) is request:
                del self._requests[request_id]

    async def abort(self, request_id: str) -> None:
        request = self._requests.get(request_id)
        if request is not None:
            request.aborted = True

    async def warm(self, prompt_ids: Sequence[int], request_id: str | None = None) -> int:
        """Prefill ``prompt_ids`` and keep its KV cache for prompts that start with it.

        It counts in ``running()`` and stops between prefill chunks on ``abort`` or
        cancellation; the chunks done by then are kept as a shorter prefix.

        Raises:
            EngineRequestError: the prompt is longer than the model's positions, or
                ``request_id`` is running.
            EngineDeadError: the engine is closed.
        """
        state = self._state()
        ids = list(prompt_ids)
        if not ids:
            return 0
        _check_length(state, len(ids), 0)
        request_id = request_id or f"{WARM_ID_PREFIX}{uuid.uuid4().hex}"
        if request_id in self._requests:
            raise EngineRequestError(f"request id {request_id!r} is already running")
        request = _Request(request_id)
        self._requests[request_id] = request
        try:
            return await self._warm(state, request, ids)
        finally:
            if self._requests.get(request_id) is request:
                del self._requests[request_id]

    async def _warm(self, state: _Loaded, request: _Request, ids: list[int]) -> int:
        seq, cached = await self._step(self._open_sequence, state, ids, None, True)
        if cached == len(ids):
            return cached
        done = submitted = cached
        try:
            for start in range(cached, len(ids), PREFILL_CHUNK):
                if request.aborted:
                    break
                submitted = min(start + PREFILL_CHUNK, len(ids))
                await self._step(self._forward, state, seq, ids[start:submitted])
                done = submitted
        except asyncio.CancelledError:
            # The chunk in flight still runs on the executor; anything submitted now
            # runs after it, so it is stored with that chunk included.
            with contextlib.suppress(RuntimeError):  # the executor is shut down
                self._executor.submit(self._store_prefix, tuple(ids[:submitted]), seq)
            raise
        if done > cached:
            await self._step(self._store_prefix, tuple(ids[:done]), seq)
        return done

    async def close(self) -> None:
        """Abort every request and stop the executor; the engine cannot be restarted."""
        if self._closed:
            return
        self._closed = True
        for request in self._requests.values():
            request.aborted = True
        # Running requests notice the abort after their current step; that step may
        # still be queued, so the executor drains instead of cancelling it. The prefix
        # cache belongs to the executor thread, so it is dropped there, after them.
        if self._prefixes:
            self._executor.submit(self._prefixes.clear)
        self._executor.shutdown(wait=False)
        self._loaded = None

    # -- loop side ------------------------------------------------------------------

    async def _run(
        self,
        state: _Loaded,
        request: _Request,
        prompt_ids: list[int],
        sampling: SamplingSpec,
    ) -> AsyncIterator[EngineOutput]:
        if not prompt_ids:
            raise EngineRequestError("prompt is empty")
        _check_length(state, len(prompt_ids), sampling.max_tokens)
        queued = time.monotonic()
        seq, cached = await self._step(self._open_sequence, state, prompt_ids, sampling, False)
        # The executor reached the request: it runs from here, one step at a time.
        scheduled = time.monotonic()
        completion = 0
        stamps_due = True  # the first output carries them

        def output(text: str, reason: FinishReason | None = None) -> EngineOutput:
            nonlocal stamps_due
            stamps = None
            if stamps_due:
                stamps_due = False
                stamps = EngineStamps(
                    queued=queued, scheduled=scheduled, first_token=time.monotonic()
                )
            return EngineOutput(
                text=text,
                finish_reason=reason,
                prompt_tokens=len(prompt_ids),
                completion_tokens=completion,
                cached_tokens=cached,
                stamps=stamps,
            )

        text_stream = TextStream(state.tokenizer, sampling.stop)
        # Every prompt token not covered by the cache goes through the model; the last
        # chunk leaves the logits of the first new token behind.
        for start in range(cached, len(prompt_ids), PREFILL_CHUNK):
            if request.aborted:
                yield output("", "abort")
                return
            await self._step(self._forward, state, seq, prompt_ids[start : start + PREFILL_CHUNK])
        token_id = None
        while True:
            if request.aborted:
                yield output("", "abort")
                return
            token_id = await self._step(self._sample_next, state, seq, sampling, token_id)
            if request.aborted:
                yield output("", "abort")
                return
            completion += 1
            if token_id in state.eos_ids and not sampling.ignore_eos:
                yield output(text_stream.finish(), "stop")
                return
            text = text_stream.push((token_id,))
            if text_stream.stopped:
                yield output(text, "stop")
                return
            if completion >= sampling.max_tokens:
                text += text_stream.finish()
                yield output(text, "stop" if text_stream.stopped else "length")
                return
            if text:
                yield output(text)

    async def _step(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run one model step for a request; its failure fails only that request."""
        try:
            return await self._call(fn, *args)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineRequestError(f"model step failed: {exc!r}") from exc

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise EngineDeadError("engine is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _state(self) -> _Loaded:
        if self._closed:
            raise EngineDeadError("engine is closed")
        if self._loaded is None:
            raise EngineError("engine is not started")
        return self._loaded

    # -- executor side --------------------------------------------------------------

    def _load(self) -> _Loaded:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = self._config.model
        if source.startswith("tiny-"):
            from actors.models.tiny import ensure_tiny_model

            cache_root = Path(self._config.model_cache_dir).expanduser()
            source = str(ensure_tiny_model(cache_root, self._config.model))
        device = torch.device(self._config.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise EngineDeadError(f"cannot load model {source!r}: {exc}") from exc
        if device.type == "cpu":
            # Half precision is slow or unsupported for many CPU kernels.
            model = model.float()
        model = model.to(device).eval()

        eos_ids = set()
        for ids in (tokenizer.eos_token_id, model.generation_config.eos_token_id):
            if isinstance(ids, int):
                eos_ids.add(ids)
            elif ids is not None:
                eos_ids.update(ids)
        vocab = tokenizer.get_vocab()
        eos_ids.update(vocab[token] for token in EOS_TOKENS if token in vocab)

        forward_params = inspect.signature(model.forward).parameters
        vocab_size = int(model.config.vocab_size)
        banned_ids = filler_ids(tokenizer, vocab_size) - eos_ids
        banned = None
        if banned_ids:
            banned = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            banned[torch.tensor(sorted(banned_ids), device=device)] = True
        return _Loaded(
            model=model,
            tokenizer=tokenizer,
            device=device,
            eos_ids=frozenset(eos_ids),
            max_positions=int(model.config.max_position_embeddings),
            vocab_size=vocab_size,
            banned=banned,
            cache_kwarg="cache" if "cache" in forward_params else "past_key_values",
        )

    def _open_sequence(
        self,
        state: _Loaded,
        prompt_ids: list[int],
        sampling: SamplingSpec | None,
        whole_prompt: bool,
    ) -> tuple[_Sequence, int]:
        """Start a sequence from the longest cached prefix; return it and that length.

        A generation keeps at least one prompt token to prefill, because the logits
        for the first new token come from the last prompt position.
        """
        import torch
        from transformers import DynamicCache

        limit = len(prompt_ids) if whole_prompt else len(prompt_ids) - 1
        best_key, best = None, 0
        for key in self._prefixes:
            size = min(_common_prefix(key, prompt_ids), limit)
            if size > best:
                best_key, best = key, size
        with torch.inference_mode():
            if best_key is None:
                cache = DynamicCache()
            else:
                self._prefixes.move_to_end(best_key)
                cache = copy.deepcopy(self._prefixes[best_key])
                if len(best_key) > best:
                    cache.crop(best - len(best_key))
            seen = torch.zeros(state.vocab_size, dtype=torch.bool, device=state.device)
            seen[torch.tensor(prompt_ids, device=state.device)] = True
        generator = None
        if sampling is not None and sampling.temperature > 0:
            generator = torch.Generator(device=state.device)
            if sampling.seed is None:
                generator.seed()
            else:
                generator.manual_seed(sampling.seed)
        return _Sequence(cache=cache, seen=seen, generator=generator), best

    def _forward(self, state: _Loaded, seq: _Sequence, token_ids: list[int]) -> None:
        import torch

        with torch.inference_mode():
            input_ids = torch.tensor([token_ids], dtype=torch.long, device=state.device)
            out = state.model(
                input_ids=input_ids,
                use_cache=True,
                logits_to_keep=1,
                **{state.cache_kwarg: seq.cache},
            )
            seq.logits = out.logits[0, -1].float()

    def _sample_next(
        self, state: _Loaded, seq: _Sequence, sampling: SamplingSpec, feed: int | None
    ) -> int:
        """Feed the last sampled token (if any) and sample the next one."""
        import torch

        if feed is not None:
            self._forward(state, seq, [feed])
        assert seq.logits is not None
        with torch.inference_mode():
            token_id = _sample(seq.logits, seq.seen, sampling, seq.generator, state.banned)
            seq.seen[token_id] = True
        return token_id

    def _store_prefix(self, key: tuple[int, ...], seq: _Sequence) -> None:
        if seq.cache.get_seq_length() != len(key):
            return  # a prefill step failed: the cache does not hold what the key says
        self._prefixes[key] = seq.cache
        self._prefixes.move_to_end(key)
        while len(self._prefixes) > PREFIX_CACHE_ENTRIES:
            self._prefixes.popitem(last=False)


def _sample(
    logits: torch.Tensor,
    seen: torch.Tensor,
    sampling: SamplingSpec,
    generator: torch.Generator | None,
    banned: torch.Tensor | None = None,
) -> int:
    """Pick the next token: fillers masked out, repetition penalty, then greedy or
    temperature/top-k/top-p/min-p."""
    import torch

    if banned is not None:
        logits = logits.masked_fill(banned, float("-inf"))
    if sampling.repetition_penalty != 1.0:
        penalty = sampling.repetition_penalty
        picked = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest head whose mass reaches top_p (the first token always).
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= sampling.top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    if sampling.min_p > 0:
        probs = probs.masked_fill(probs < sampling.min_p * probs.max(), 0.0)
    return int(torch.multinomial(probs, 1, generator=generator))


def _check_sampling(sampling: SamplingSpec) -> None:
    problems = []
    if sampling.max_tokens < 1:
        problems.append("max_tokens must be at least 1")
    if sampling.temperature < 0:
        problems.append("temperature must not be negative")
    if not 0 < sampling.top_p <= 1:
        problems.append("top_p must be in (0, 1]")
    if sampling.top_k < 0:
        problems.append("top_k must not be negative")
    if not 0 <= sampling.min_p <= 1:
        problems.append("min_p must be in [0, 1]")
    if sampling.repetition_penalty <= 0:
        problems.append("repetition_penalty must be positive")
    if problems:
        raise EngineRequestError("; ".join(problems))


def _check_length(state: _Loaded, prompt_tokens: int, max_tokens: int) -> None:
    if prompt_tokens + max_tokens > state.max_positions:
        raise EngineRequestError(
            f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) "
            f"exceeds the model's {state.max_positions} positions"
        )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    size = min(len(a), len(b))
    for i in range(size):
        if a[i] != b[i]:
            return i
    return size


def _set_torch_threads(count: int) -> None:
    import torch

    with contextlib.suppress(RuntimeError):
        torch.set_num_threads(count)
