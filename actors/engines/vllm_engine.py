"""An engine on vLLM's ``AsyncLLM``: continuous batching and prefix caching on a GPU.

Each actor owns one ``VllmEngine``; its engine core runs in a child process that
vLLM starts and owns. This module maps our config and ``SamplingSpec`` onto vLLM's
arguments (pure functions, importable without vLLM, tested in CI) and wraps
``AsyncLLM.generate`` so that it streams ``EngineOutput`` deltas:

* The prompt arrives as token ids (the actors encode it, keeping the ids of what
  repeats) and goes to vLLM as a ``TokensInput`` (``vllm.inputs.tokens_input``): vLLM
  tokenizes nothing.
* vLLM is asked for ids only (``detokenize=False``). Its detokenizer would prime a
  ``DecodeStream`` with the whole prompt and decode it again on the first token, in
  the actor's process, on its event loop (about 0.5 ms for a 2,600-token prompt on a
  slow core, per request); the reply is decoded here instead, from an empty stream
  (``actors.engines.detokenize``), and stop strings are matched here too (vLLM
  allows none without detokenizing), aborting the request on a hit.
* A ``random:`` model samples from up to 1,024 of the tokenizer's trained tokens
  (``allowed_token_ids``; vLLM's V2 model runner takes no more): its random weights
  would otherwise pick the vocabulary's filler entries, whose names re-encode into
  ten tokens each, so a reply fed back as history would be ten times its length,
  unlike a real model's.
* ``abort`` is idempotent; an aborted stream ends with a ``finish_reason "abort"``
  output. Cancelling the consumer, or closing the stream early, aborts the request
  inside vLLM too (``AsyncLLM.generate`` aborts on ``CancelledError`` and
  ``GeneratorExit``).
* vLLM's ``EngineDeadError`` becomes ours; a failure of one request (bad input,
  prompt too long, an error finish) becomes ``EngineRequestError``.

vLLM is imported in ``start()`` only, and ``AsyncLLM`` is built on the event loop
(as vLLM's own server does): starting blocks the loop while the engine core loads
the model, compiles and captures CUDA graphs, typically tens of seconds.

A model named ``random:<shape>`` (a key of ``actors.models.gpu.GPU_SHAPES``) is a
random-weight checkpoint in a real model's shape, generated on first use under
``model_cache_dir`` by ``python -m actors.models.gpu`` in a child process (so CUDA
is never initialised in the actor before vLLM forks its engine core).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from actors.engines.base import (
    EngineDeadError,
    EngineError,
    EngineOutput,
    EngineRequestError,
    EngineStamps,
    FinishReason,
    SamplingSpec,
    sampling_spec,
)
from actors.engines.detokenize import TextStream
from actors.engines.vocab import sampleable_ids
from configs.schema import EngineConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = [
    "KV_CACHE_DTYPES",
    "RANDOM_MODEL_PREFIX",
    "VllmEngine",
    "engine_args",
    "engine_stamps",
    "finish_reason",
    "random_model_dir",
    "random_model_shape",
    "resolve_quantization",
    "sampling_kwargs",
]

# Our kv_dtype -> vLLM's kv_cache_dtype. vLLM has no plain int8 KV cache; its
# per-token-head int8 cache runs on the Triton attention backend only.
KV_CACHE_DTYPES: Final[Mapping[str, str]] = {
    "auto": "auto",
    "fp8": "fp8",
    "int8": "int8_per_token_head",
}
# Quantization values that mean "leave the checkpoint's weights as they are".
NO_QUANTIZATION: Final = frozenset({"none", "off", "bf16", "fp16"})
# vLLM's finish reasons that are ours as they are; "repetition" (its hallucination
# detector) is reported as a stop, and "error" raises.
_FINISH_REASONS: Final[Mapping[str, FinishReason]] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "repetition": "stop",
}
RANDOM_MODEL_PREFIX: Final = "random:"
# Warming runs behind real turns: with the priority policy a larger value waits.
WARM_PRIORITY_DELTA: Final = 1
WARM_ID_PREFIX: Final = "warm-"
# vLLM samples top-k/top-p through a Triton kernel once this many requests decode
# together; the kernel is compiled the first time (about 10 s on an H100, stalling
# every stream), so start() runs that many short requests with the config's sampling.
SAMPLER_WARMUP_BATCH: Final = 8
SAMPLER_WARMUP_PROMPT: Final = "Hello there."
# Set in the engine's environment before vLLM is imported (the user's value wins).
# flashinfer is not in our GPU bundle, and its sampler is not needed for these models.
VLLM_ENV_DEFAULTS: Final[Mapping[str, str]] = {"VLLM_USE_FLASHINFER_SAMPLER": "0"}

_log = logging.getLogger(__name__)


def resolve_quantization(model: str, quantization: str | None) -> str | None:
    """The ``quantization`` argument for vLLM, following the seed's rule.

    ``None`` (or ``"auto"``) picks by the model name: a GPTQ or AWQ checkpoint loads
    with its own method, anything else is quantized to fp8 on load. ``"none"``,
    ``"off"``, ``"bf16"`` and ``"fp16"`` keep the weights as stored; any other value
    (``"awq"``, ``"gptq"``, ``"fp8"``, ...) is passed to vLLM as given.
    """
    if quantization is not None:
        value = quantization.strip().lower()
        if value in NO_QUANTIZATION:
            return None
        if value != "auto":
            return value
    name = model.lower()
    if "gptq" in name:
        return "gptq"
    if "awq" in name:
        return "awq"
    return "fp8"


def engine_args(
    config: EngineConfig, *, gpu_frac: float, model_path: str | None = None
) -> dict[str, Any]:
    """The keyword arguments of vLLM's ``AsyncEngineArgs`` for ``config``.

    Args:
        config: the engine's section of the deployment config.
        gpu_frac: the share of the GPU's memory this engine may take
            (``Config.gpu_frac(kind)``); two engines on one GPU split it.
        model_path: where the model is, when that is not ``config.model`` (a
            generated ``random:`` model, say); the quantization rule still reads
            ``config.model``.

    Raises:
        ValueError: ``gpu_frac`` is not in (0, 1] or ``max_len`` is not positive.
    """
    if not 0.0 < gpu_frac <= 1.0:
        raise ValueError(f"gpu_frac must be in (0, 1], not {gpu_frac}")
    if config.max_len <= 0:
        raise ValueError(f"max_len must be positive, not {config.max_len}")
    model = model_path or config.model
    args: dict[str, Any] = {
        "model": model,
        "tokenizer": model,
        "dtype": "auto",
        "quantization": resolve_quantization(config.model, config.quantization),
        "kv_cache_dtype": KV_CACHE_DTYPES[config.kv_dtype],
        "gpu_memory_utilization": gpu_frac,
        "max_model_len": config.max_len,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
        "enforce_eager": config.enforce_eager,
        # Lower values run first; warming runs one step behind real turns.
        "scheduling_policy": "priority",
        "enable_log_requests": False,
    }
    if config.max_num_batched_tokens is not None:
        args["max_num_batched_tokens"] = config.max_num_batched_tokens
    return args


def sampling_kwargs(
    spec: SamplingSpec, *, allowed_token_ids: Sequence[int] | None = None
) -> dict[str, Any]:
    """The keyword arguments of vLLM's ``SamplingParams`` for ``spec``.

    The caller adds ``output_kind=RequestOutputKind.DELTA``. vLLM returns token ids
    only (``detokenize=False``): the engine decodes the text and cuts it at
    ``spec.stop`` itself, so no stop strings go to vLLM (it accepts none without
    detokenizing).

    Args:
        spec: the request's sampling.
        allowed_token_ids: restrict sampling to these ids (random-weight models).

    Raises:
        EngineRequestError: ``max_tokens`` is below 1.
    """
    if spec.max_tokens < 1:
        raise EngineRequestError(f"max_tokens must be at least 1, not {spec.max_tokens}")
    kwargs: dict[str, Any] = {
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "top_k": spec.top_k,
        "min_p": spec.min_p,
        "repetition_penalty": spec.repetition_penalty,
        "seed": spec.seed,
        "ignore_eos": spec.ignore_eos,
        "detokenize": False,
    }
    if allowed_token_ids is not None:
        kwargs["allowed_token_ids"] = list(allowed_token_ids)
    return kwargs


def finish_reason(reason: str | None, stop_reason: object = None) -> FinishReason | None:
    """Our finish reason for vLLM's ``CompletionOutput.finish_reason``.

    Raises:
        EngineRequestError: vLLM finished the request with an error.
    """
    if reason is None:
        return None
    try:
        return _FINISH_REASONS[reason]
    except KeyError:
        detail = f" ({stop_reason})" if stop_reason is not None else ""
        raise EngineRequestError(f"vLLM finished the request with {reason!r}{detail}") from None


def engine_stamps(metrics: object) -> EngineStamps | None:
    """Our stamps from a ``RequestOutput.metrics`` (vLLM's ``RequestStateStats``).

    The engine core stamps with ``time.monotonic()`` in its own process: the same
    clock as the actor's. None when vLLM keeps no stats (``disable_log_stats``).
    """
    if metrics is None:
        return None
    return EngineStamps(
        queued=float(getattr(metrics, "queued_ts", 0.0) or 0.0),
        scheduled=float(getattr(metrics, "scheduled_ts", 0.0) or 0.0),
        first_token=float(getattr(metrics, "first_token_ts", 0.0) or 0.0),
    )


def random_model_shape(model: str) -> str | None:
    """The shape name of a ``random:<shape>`` model, else ``None``."""
    if model.startswith(RANDOM_MODEL_PREFIX):
        return model.removeprefix(RANDOM_MODEL_PREFIX)
    return None


def random_model_dir(shape_name: str, cache_dir: str) -> Path:
    """The directory a ``random:<shape_name>`` model is generated into.

    Raises:
        EngineDeadError: ``shape_name`` is no known shape.
    """
    from actors.models.gpu import GPU_SHAPES, model_dir

    try:
        shape = GPU_SHAPES[shape_name]
    except KeyError:
        known = ", ".join(sorted(GPU_SHAPES))
        raise EngineDeadError(
            f"unknown random model shape {shape_name!r}; known: {known}"
        ) from None
    return model_dir(shape, cache_dir)


@dataclasses.dataclass(frozen=True)
class _Vllm:
    """The vLLM names the engine uses, imported by ``start()``."""

    llm: AsyncLLM
    sampling_params: Any  # vllm.SamplingParams
    delta: Any  # vllm.sampling_params.RequestOutputKind.DELTA
    tokens_input: Any  # vllm.inputs.tokens_input
    dead_error: type[BaseException]  # vllm.v1.engine.exceptions.EngineDeadError
    generate_error: type[BaseException]  # ...EngineGenerateError


class VllmEngine:
    """The ``Engine`` on vLLM's ``AsyncLLM``.

    Args:
        config: ``model`` is a hub id, a local directory or ``random:<shape>``;
            ``quantization``, ``kv_dtype``, ``max_len``, ``max_num_batched_tokens``
            and ``enforce_eager`` go to vLLM (see :func:`engine_args`).
        gpu_frac: the share of GPU memory for this engine.
        overrides: extra ``AsyncEngineArgs`` keywords, applied last (benchmarks and
            tests; a deployment sets what it needs in the config).
    """

    def __init__(
        self,
        config: EngineConfig,
        *,
        gpu_frac: float,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.model_id = config.model
        self._config = config
        self._gpu_frac = gpu_frac
        self._overrides = dict(overrides or {})
        self._vllm: _Vllm | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._closed = False
        # Requests whose stream is open -> whether abort() was asked for.
        self._requests: dict[str, bool] = {}
        # What a random-weight model may sample (see the module notes); None: anything.
        self._allowed_ids: list[int] | None = None
        self.model_path: str | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's Hugging Face tokenizer (``AutoTokenizer`` on the model dir)."""
        if self._tokenizer is None:
            raise EngineError("engine is not started")
        return self._tokenizer

    async def start(self) -> None:
        """Load the tokenizer and start vLLM's engine core; idempotent.

        Raises:
            EngineDeadError: vLLM is missing or failed to start (the model did not
                fit in ``gpu_frac``, say), or the engine was closed.
        """
        if self._closed:
            raise EngineDeadError("engine is closed")
        if self._vllm is not None:
            return
        model_path = await self._model_path()
        for name, value in VLLM_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        try:
            from transformers import AutoTokenizer
            from vllm import AsyncEngineArgs, SamplingParams
            from vllm.inputs import tokens_input
            from vllm.sampling_params import RequestOutputKind
            from vllm.v1.engine.async_llm import AsyncLLM
            from vllm.v1.engine.exceptions import EngineDeadError as VllmDeadError
            from vllm.v1.engine.exceptions import EngineGenerateError
        except ImportError as exc:
            raise EngineDeadError("vLLM is not installed (pip install 'yap-bus[gpu]')") from exc

        args = engine_args(self._config, gpu_frac=self._gpu_frac, model_path=model_path)
        args.update(self._overrides)
        self._tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, model_path)
        if random_model_shape(self._config.model) is not None:
            self._allowed_ids = await asyncio.to_thread(sampleable_ids, self._tokenizer)
        _log.info(
            "starting vLLM for %s: quantization=%s kv_cache_dtype=%s gpu_frac=%.2f "
            "max_model_len=%d",
            self.model_id,
            args["quantization"],
            args["kv_cache_dtype"],
            args["gpu_memory_utilization"],
            args["max_model_len"],
        )
        try:
            llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        except Exception as exc:
            raise EngineDeadError(f"vLLM failed to start {self.model_id}: {exc}") from exc
        self._vllm = _Vllm(
            llm=llm,
            sampling_params=SamplingParams,
            delta=RequestOutputKind.DELTA,
            tokens_input=tokens_input,
            dead_error=VllmDeadError,
            generate_error=EngineGenerateError,
        )
        await self._warm_sampler()

    @property
    def async_llm(self) -> AsyncLLM:
        """The running ``AsyncLLM``, for benchmarks and diagnostics (not for actors)."""
        return self._api().llm

    def running(self) -> int:
        """Open streams (turns and warm-ups); 0 once every stream has ended."""
        return len(self._requests)

    def unfinished_in_vllm(self) -> int:
        """Requests vLLM's output processor still tracks; 0 when nothing leaked."""
        if self._vllm is None:
            return 0
        return int(self._vllm.llm.output_processor.get_num_unfinished_requests())

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingSpec,
        request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[EngineOutput]:
        """Stream deltas for the prompt ``prompt_ids`` (rendered, encoded, no BOS added).

        ``priority``: lower runs first (vLLM's priority policy), 0 by default.

        Raises:
            EngineRequestError: duplicate running id, empty or too long prompt, bad
                sampling values, or vLLM failed this request.
            EngineDeadError: the engine is closed, not started, or its core died.
        """
        api = self._api()
        if request_id in self._requests:
            raise EngineRequestError(f"request id {request_id!r} is already running")
        ids = list(prompt_ids)
        if not ids:
            raise EngineRequestError("prompt is empty")
        try:
            params = api.sampling_params(
                **sampling_kwargs(sampling, allowed_token_ids=self._allowed_ids),
                output_kind=api.delta,
            )
        except (ValueError, TypeError) as exc:
            raise EngineRequestError(f"bad sampling parameters: {exc}") from exc

        self._requests[request_id] = False
        text = TextStream(self.tokenizer, sampling.stop)
        stream = api.llm.generate(api.tokens_input(ids), params, request_id, priority=priority)
        completion_tokens = 0
        stamps_due = True  # the first output we yield carries the engine's stamps
        finished = False  # vLLM said the request is done
        settled = False  # it failed, or we aborted it: no abort is owed
        try:
            async for out in stream:
                completion = out.outputs[0]
                new_ids = list(completion.token_ids)
                completion_tokens += len(new_ids)
                finished = out.finished
                reason = finish_reason(completion.finish_reason, completion.stop_reason)
                if reason is None and out.finished:
                    reason = "stop"
                if completion.finish_reason == "stop" and not isinstance(
                    completion.stop_reason, str
                ):
                    # It stopped on a stop token (eos, say), which is not text.
                    new_ids = new_ids[:-1]
                delta = text.push(new_ids)
                if text.stopped and reason is None:
                    # A stop string, which vLLM does not see: end the request here.
                    settled = True
                    await api.llm.abort(request_id)
                    reason = "stop"
                elif reason is not None:
                    delta += text.finish()
                    if text.stopped:
                        reason = "stop"
                else:
                    if self._requests.get(request_id):
                        # abort() raced with vLLM registering the request: repeat it.
                        await api.llm.abort(request_id)
                    if not delta:
                        continue
                stamps = None
                if stamps_due:
                    stamps_due = False
                    stamps = engine_stamps(out.metrics)
                yield EngineOutput(
                    text=delta,
                    finish_reason=reason,
                    prompt_tokens=len(ids),
                    completion_tokens=completion_tokens,
                    cached_tokens=out.num_cached_tokens or 0,
                    stamps=stamps,
                )
                if reason is not None:
                    return
        except api.dead_error as exc:
            settled = True
            raise EngineDeadError(f"vLLM engine core died: {exc}") from exc
        except api.generate_error as exc:
            settled = True
            if api.llm.errored:
                raise EngineDeadError("vLLM engine core died") from exc
            raise EngineRequestError(f"vLLM failed the request: {exc.__cause__!r}") from exc
        except ValueError as exc:
            # vLLM rejects bad input (a prompt over max_model_len, say) with ValueError.
            settled = True
            raise EngineRequestError(str(exc)) from exc
        finally:
            self._requests.pop(request_id, None)
            if finished:
                # Let vLLM's generator run to its end, so it does not abort a request
                # that is already done (it does when closed early).
                await anext(stream, None)
            else:
                # Closing vLLM's stream aborts its request; the explicit abort covers a
                # consumer that left early and is a no-op if that already happened.
                await stream.aclose()
                if not settled:
                    await api.llm.abort(request_id)

    async def abort(self, request_id: str) -> None:
        """Stop ``request_id``; its stream ends with an ``"abort"`` output."""
        if self._vllm is None or request_id not in self._requests:
            return
        self._requests[request_id] = True
        await self._vllm.llm.abort(request_id)

    async def warm(self, prompt_ids: Sequence[int], request_id: str | None = None) -> int:
        """Run ``prompt_ids`` for one token so that its KV blocks enter the prefix cache.

        It runs one priority step behind real turns (``config.priority + 1``).
        Cancelling it aborts the request; vLLM keeps the blocks it filled by then.

        Returns:
            The prompt's length in tokens (0 for an empty prompt).

        Raises:
            EngineRequestError: vLLM rejected the prompt (too long, say).
            EngineDeadError: the engine is closed, not started, or its core died.
        """
        self._api()
        if not prompt_ids:
            return 0
        request_id = request_id or f"{WARM_ID_PREFIX}{uuid.uuid4().hex}"
        priority = self._config.priority + WARM_PRIORITY_DELTA
        prompt_tokens = 0
        async for output in self.generate(
            prompt_ids, SamplingSpec(max_tokens=1), request_id, priority=priority
        ):
            prompt_tokens = output.prompt_tokens
        return prompt_tokens

    async def close(self) -> None:
        """Abort every request and shut vLLM down; the engine cannot be restarted."""
        if self._closed:
            return
        self._closed = True
        api, self._vllm = self._vllm, None
        if api is None:
            return
        try:
            if self._requests:
                await api.llm.abort(list(self._requests))
        except Exception:  # the core may be gone already; shutting down regardless
            _log.warning("abort at close failed", exc_info=True)
        api.llm.shutdown()

    async def _warm_sampler(self) -> None:
        """Have vLLM compile its batched top-k/top-p kernel before the first real turn."""
        sampling = self._config.sampling
        if sampling.temperature <= 0 or (sampling.top_k <= 0 and sampling.top_p >= 1.0):
            return
        spec = sampling_spec(sampling, max_tokens=4)
        priority = self._config.priority + WARM_PRIORITY_DELTA

        prompt_ids = self.tokenizer.encode(SAMPLER_WARMUP_PROMPT, add_special_tokens=False)

        async def one(index: int) -> None:
            request_id = f"{WARM_ID_PREFIX}sampler-{index}-{uuid.uuid4().hex}"
            async for _ in self.generate(prompt_ids, spec, request_id, priority):
                pass

        try:
            await asyncio.gather(*(one(i) for i in range(SAMPLER_WARMUP_BATCH)))
        except EngineRequestError:
            _log.warning("sampler warm-up failed; the first busy turn may stall", exc_info=True)

    def _api(self) -> _Vllm:
        if self._closed:
            raise EngineDeadError("engine is closed")
        if self._vllm is None:
            raise EngineDeadError("engine is not started")
        if self._vllm.llm.errored:
            raise EngineDeadError("vLLM engine core died")
        return self._vllm

    async def _model_path(self) -> str:
        """Where vLLM loads the model from, generating a ``random:`` model if needed."""
        shape_name = random_model_shape(self._config.model)
        if shape_name is None:
            self.model_path = self._config.model
            return self.model_path
        out = random_model_dir(shape_name, self._config.model_cache_dir)
        if not await asyncio.to_thread(out.is_dir):
            _log.info("generating %s into %s", self._config.model, out)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "actors.models.gpu", "--shape", shape_name, "--out", str(out)
            )
            if await proc.wait() != 0:
                raise EngineDeadError(f"generating {self._config.model} failed")
        self.model_path = str(out)
        return self.model_path
