"""The vLLM engine's pure parts: config to engine args, sampling, finish reasons, shapes.

None of these import vLLM, so they run in CI; where vLLM is installed, one more test
checks that vLLM accepts the arguments.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from actors.engines.base import (
    EngineDeadError,
    EngineError,
    EngineRequestError,
    SamplingSpec,
    sampling_spec,
)
from actors.engines.vllm_engine import (
    KV_CACHE_DTYPES,
    VllmEngine,
    engine_args,
    finish_reason,
    random_model_shape,
    resolve_quantization,
    sampling_kwargs,
)
from actors.models.gpu import FILLER_TOKEN, GPU_SHAPES, hf_config_dict
from configs.loader import load_config
from configs.schema import ChatConfig, EngineConfig, SamplingConfig, ToolConfig

GPU_TOML = Path(__file__).parents[3] / "configs" / "gpu.toml"


# -- quantization --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("SicariusSicariiStuff/Impish_Nemo_12B", "fp8"),
        ("MadeAgents/Hammer2.1-1.5b", "fp8"),
        ("someone/Mistral-Nemo-Instruct-2407-GPTQ", "gptq"),
        ("someone/impish-nemo-12b-gptq-4bit", "gptq"),
        ("someone/Llama-3.1-8B-Instruct-AWQ", "awq"),
        ("random:mistral-nemo-12b", "fp8"),
    ],
)
def test_auto_quantization_follows_the_model_name(model: str, expected: str) -> None:
    """With no quantization set, GPTQ/AWQ names keep their method and the rest get fp8."""
    assert resolve_quantization(model, None) == expected
    assert resolve_quantization(model, "auto") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("awq", "awq"),
        ("AWQ", "awq"),
        ("gptq", "gptq"),
        (" fp8 ", "fp8"),
        ("none", None),
        ("off", None),
        ("bf16", None),
    ],
)
def test_explicit_quantization_wins(value: str, expected: str | None) -> None:
    """An explicit value is passed on (normalized), and "none" keeps the weights as stored."""
    assert resolve_quantization("someone/Model-GPTQ", value) == expected


# -- engine args ---------------------------------------------------------------------


def test_engine_args_carry_the_config() -> None:
    """Every GPU field of the engine config lands on its vLLM argument."""
    config = ChatConfig(
        backend="vllm",
        model="SicariusSicariiStuff/Impish_Nemo_12B",
        kv_dtype="fp8",
        max_len=5760,
        max_num_batched_tokens=4096,
        enforce_eager=True,
    )
    args = engine_args(config, gpu_frac=0.7)
    assert args == {
        "model": "SicariusSicariiStuff/Impish_Nemo_12B",
        "tokenizer": "SicariusSicariiStuff/Impish_Nemo_12B",
        "dtype": "auto",
        "quantization": "fp8",
        "kv_cache_dtype": "fp8",
        "gpu_memory_utilization": 0.7,
        "max_model_len": 5760,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
        "enforce_eager": True,
        "scheduling_policy": "priority",
        "enable_log_requests": False,
        "max_num_batched_tokens": 4096,
    }


def test_engine_args_leave_batch_budget_to_vllm_when_unset() -> None:
    """No max_num_batched_tokens in the config means vLLM's own default."""
    args = engine_args(EngineConfig(model="m"), gpu_frac=0.9)
    assert "max_num_batched_tokens" not in args
    assert args["enforce_eager"] is False


@pytest.mark.parametrize(("ours", "theirs"), list(KV_CACHE_DTYPES.items()))
def test_kv_dtype_is_applied(ours: str, theirs: str) -> None:
    """KV_DTYPE fp8|auto|int8 becomes vLLM's kv_cache_dtype."""
    config = EngineConfig(model="m", kv_dtype=ours)  # type: ignore[arg-type]
    assert engine_args(config, gpu_frac=0.5)["kv_cache_dtype"] == theirs


def test_model_path_replaces_the_model_but_not_the_quantization_rule() -> None:
    """A generated model loads from its directory; its name still picks quantization."""
    config = EngineConfig(model="someone/Model-GPTQ")
    args = engine_args(config, gpu_frac=0.5, model_path="/tmp/models/x")
    assert args["model"] == args["tokenizer"] == "/tmp/models/x"
    assert args["quantization"] == "gptq"


@pytest.mark.parametrize("gpu_frac", [0.0, -0.1, 1.5])
def test_gpu_frac_out_of_range_is_refused(gpu_frac: float) -> None:
    """A memory share outside (0, 1] is a config error, caught before vLLM starts."""
    with pytest.raises(ValueError, match="gpu_frac"):
        engine_args(EngineConfig(model="m"), gpu_frac=gpu_frac)


def test_gpu_toml_splits_the_gpu_between_the_actors() -> None:
    """The example GPU deployment runs both actors on vLLM at 0.20 + 0.70, fp8 everywhere."""
    config = load_config(GPU_TOML)
    tool = engine_args(config.tool, gpu_frac=config.gpu_frac("tool"))
    chat = engine_args(config.chat, gpu_frac=config.gpu_frac("chat"))
    assert (config.tool.backend, config.chat.backend) == ("vllm", "vllm")
    assert (tool["model"], chat["model"]) == (
        "MadeAgents/Hammer2.1-1.5b",
        "SicariusSicariiStuff/Impish_Nemo_12B",
    )
    assert (tool["gpu_memory_utilization"], chat["gpu_memory_utilization"]) == (0.20, 0.70)
    assert tool["quantization"] == chat["quantization"] == "fp8"
    assert tool["kv_cache_dtype"] == chat["kv_cache_dtype"] == "fp8"
    assert chat["max_model_len"] == 5760


def test_seed_env_vars_reach_the_engine_args() -> None:
    """QUANTIZATION, KV_DTYPE, CHAT_MAX_LEN and CHAT_MODEL override the TOML file."""
    config = load_config(
        GPU_TOML,
        environ={
            "QUANTIZATION": "awq",
            "KV_DTYPE": "auto",
            "CHAT_MAX_LEN": "4096",
            "CHAT_MODEL": "someone/Nemo-GPTQ",
            "DEPLOY_MODELS": "chat",
        },
    )
    chat = engine_args(config.chat, gpu_frac=config.gpu_frac("chat"))
    assert chat["quantization"] == "awq"
    assert chat["kv_cache_dtype"] == "auto"
    assert chat["max_model_len"] == 4096
    assert chat["model"] == "someone/Nemo-GPTQ"
    assert chat["gpu_memory_utilization"] == 0.90


def test_vllm_accepts_the_engine_args(tmp_path: Path) -> None:
    """Where vLLM is installed, AsyncEngineArgs takes every key we produce."""
    vllm = pytest.importorskip("vllm")
    # A local path: a hub id would make vLLM look the model up online.
    args = engine_args(load_config(GPU_TOML).chat, gpu_frac=0.7, model_path=str(tmp_path))
    engine_args_obj = vllm.AsyncEngineArgs(**args)
    assert engine_args_obj.kv_cache_dtype == "fp8"


# -- sampling ------------------------------------------------------------------------


def test_sampling_spec_maps_onto_sampling_params() -> None:
    """Every SamplingSpec field has its SamplingParams keyword."""
    spec = SamplingSpec(
        max_tokens=200,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        stop=("\nUser:", "</s>"),
        seed=7,
        ignore_eos=True,
    )
    assert sampling_kwargs(spec) == {
        "max_tokens": 200,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "seed": 7,
        "ignore_eos": True,
        # Ids only: the engine decodes and matches the stop strings itself.
        "detokenize": False,
    }
    assert sampling_kwargs(spec, allowed_token_ids=range(3))["allowed_token_ids"] == [0, 1, 2]


def test_greedy_defaults_map_to_disabled_filters() -> None:
    """Defaults are greedy with no filters: top_k 0 is vLLM's "disabled", no stop list."""
    kwargs = sampling_kwargs(SamplingSpec(max_tokens=10))
    assert kwargs["temperature"] == 0.0
    assert kwargs["top_k"] == 0
    assert "stop" not in kwargs and "allowed_token_ids" not in kwargs
    assert kwargs["seed"] is None
    assert kwargs["ignore_eos"] is False


def test_zero_max_tokens_is_a_request_error() -> None:
    """max_tokens below 1 fails the request, not the engine."""
    with pytest.raises(EngineRequestError):
        sampling_kwargs(SamplingSpec(max_tokens=0))


def test_vllm_accepts_the_sampling_kwargs() -> None:
    """Where vLLM is installed, SamplingParams takes every key we produce."""
    vllm = pytest.importorskip("vllm")
    from vllm.sampling_params import RequestOutputKind

    spec = SamplingSpec(max_tokens=5, temperature=0.7, top_k=40, stop=("x",), seed=1)
    kwargs = sampling_kwargs(spec, allowed_token_ids=[1, 2])
    params = vllm.SamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA)
    assert params.max_tokens == 5
    assert params.detokenize is False
    assert params.stop == []  # our stop strings never reach vLLM
    assert params.allowed_token_ids == [1, 2]
    prompt = vllm.inputs.tokens_input([1, 2, 3])
    assert prompt == {"type": "token", "prompt_token_ids": [1, 2, 3]}


# -- finish reasons ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        (None, None),
        ("stop", "stop"),
        ("length", "length"),
        ("abort", "abort"),
        ("repetition", "stop"),
    ],
)
def test_finish_reasons_map(theirs: str | None, ours: str | None) -> None:
    """vLLM's finish reasons map onto ours; its repetition detector counts as a stop."""
    assert finish_reason(theirs) == ours


def test_error_finish_is_a_request_error() -> None:
    """A request vLLM finished with "error" fails that request only."""
    with pytest.raises(EngineRequestError, match="error"):
        finish_reason("error")


# -- the engine before start ----------------------------------------------------------


async def test_engine_refuses_work_before_start() -> None:
    """An engine not started has no tokenizer, nothing running, and refuses requests."""
    engine = VllmEngine(ToolConfig(backend="vllm", model="m"), gpu_frac=0.2)
    assert engine.model_id == "m"
    assert engine.running() == 0
    assert engine.unfinished_in_vllm() == 0
    with pytest.raises(EngineError):
        _ = engine.tokenizer
    with pytest.raises(EngineDeadError):
        async for _ in engine.generate([1, 2], SamplingSpec(max_tokens=1), "r1"):
            pass
    await engine.abort("r1")  # unknown ids are ignored
    await engine.close()
    await engine.close()
    with pytest.raises(EngineDeadError):
        await engine.start()


def test_module_imports_without_vllm() -> None:
    """Importing the engine module pulls in neither vLLM nor torch."""
    code = (
        "import sys, actors.engines.vllm_engine, actors.models.gpu\n"
        "assert 'vllm' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=GPU_TOML.parents[1])


# -- random-weight models -------------------------------------------------------------


def test_random_model_names() -> None:
    """random:<shape> names a generated model; anything else is a path or hub id."""
    assert random_model_shape("random:qwen2.5-1.5b") == "qwen2.5-1.5b"
    assert random_model_shape("MadeAgents/Hammer2.1-1.5b") is None
    assert set(GPU_SHAPES) == {"qwen2.5-1.5b", "llama-3.1-8b", "mistral-nemo-12b"}


@pytest.mark.parametrize(
    ("name", "billions"),
    [("qwen2.5-1.5b", 1.54), ("llama-3.1-8b", 8.03), ("mistral-nemo-12b", 12.25)],
)
def test_shapes_have_the_real_parameter_counts(name: str, billions: float) -> None:
    """Each shape's parameter count matches the real model it copies."""
    assert GPU_SHAPES[name].params / 1e9 == pytest.approx(billions, abs=0.01)


def test_shape_configs_match_the_real_models() -> None:
    """Rope, windows and tying are the real ones: Llama 3.1 scaling, no Nemo window."""
    qwen = hf_config_dict(GPU_SHAPES["qwen2.5-1.5b"], eos_token_id=2, pad_token_id=0)
    llama = hf_config_dict(GPU_SHAPES["llama-3.1-8b"], eos_token_id=2, pad_token_id=0)
    nemo = hf_config_dict(GPU_SHAPES["mistral-nemo-12b"], eos_token_id=2, pad_token_id=0)
    assert qwen["tie_word_embeddings"] is True
    assert qwen["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6}
    assert llama["rope_parameters"]["rope_type"] == "llama3"
    assert llama["rope_parameters"]["rope_theta"] == 500_000.0
    assert nemo["sliding_window"] is None
    assert nemo["head_dim"] == 128
    assert (nemo["hidden_size"], nemo["num_hidden_layers"], nemo["vocab_size"]) == (
        5120,
        40,
        131072,
    )


def test_padded_tokenizer_covers_the_whole_vocabulary() -> None:
    """Every id up to vocab_size decodes to text, and real text never encodes to filler."""
    from actors.models.gpu import build_tokenizer

    tokenizer = build_tokenizer(131072)
    assert len(tokenizer) == 131072
    assert tokenizer.decode([131071]) == FILLER_TOKEN.format(131071)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "can you look at my screen? 👀"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert max(ids) < 4096
    assert tokenizer.decode(ids) == text


def test_random_model_dir_is_named_by_shape_digest(tmp_path: Path) -> None:
    """A generated model's directory names its shape and build digest; unknown shapes fail."""
    from actors.engines.vllm_engine import random_model_dir

    shape = GPU_SHAPES["llama-3.1-8b"]
    path = random_model_dir("llama-3.1-8b", str(tmp_path))
    assert path == tmp_path / f"random-llama-3.1-8b-{shape.digest()}"
    with pytest.raises(EngineDeadError, match="unknown random model shape"):
        random_model_dir("gpt-9", str(tmp_path))


def test_sampling_spec_carries_every_configured_knob() -> None:
    """Each SamplingConfig field reaches the request's SamplingSpec unchanged."""
    config = SamplingConfig(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        stop=("\nUser:",),
        ignore_eos=True,
    )
    spec = sampling_spec(config, max_tokens=12, seed=3)
    assert msgspec.structs.asdict(spec) == {
        **msgspec.structs.asdict(config),
        "max_tokens": 12,
        "seed": 3,
    }


def test_gpu_toml_ends_in_chat_sampling(tmp_path: Path) -> None:
    """scripts/gpu/fullstack.sh appends `ignore_eos = true` to gpu.toml for parity with
    bench.gpu_raw; that lands in [chat.sampling] only while that table comes last."""
    appended = tmp_path / "gpu.toml"
    appended.write_text(GPU_TOML.read_text() + "ignore_eos = true\n")
    config = load_config(appended)
    assert config.chat.sampling.ignore_eos and not config.tool.sampling.ignore_eos
