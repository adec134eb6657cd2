"""Random-weight checkpoints in the shapes of the real models, for GPU machines offline.

A GPU box with no internet can still run the whole stack on vLLM: this module writes
a model directory with the real architecture's config (layer count, widths, heads,
vocabulary, rope), random bf16 weights initialised directly on the GPU, and a
tokenizer trained locally. The tokenizer is the tiny model's byte-level BPE with
ChatML (see ``actors.models.tiny``), its vocabulary padded up to the model's
``vocab_size`` with filler entries, so every id the model can sample decodes to
text and prompts, trimming, detokenization and stop strings run as in production.
The output is noise; the speed is the real model's.

The filler entries live in the BPE vocabulary itself, not as added tokens: no merge
produces them, so they never appear when encoding, and each decodes to its own name.
Hugging Face tokenizers copy every added token at load, which takes seconds at
130,000 entries; plain vocabulary entries cost nothing.

Usage (also a quick offline smoke test of a GPU box)::

    python -m actors.models.gpu --shape qwen2.5-1.5b --out /tmp/models/qwen2.5-1.5b
    python -m actors.models.gpu --shape mistral-nemo-12b --cache-dir ~/.cache/yap-bus

The second form writes where an engine configured with ``model =
"random:mistral-nemo-12b"`` and that ``model_cache_dir`` looks for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "GPU_SHAPES",
    "GpuShape",
    "build_tokenizer",
    "ensure_gpu_model",
    "generate_gpu_model",
    "hf_config_dict",
    "main",
    "model_dir",
]

# Bump when the build changes in a way the shape does not capture.
BUILD_VERSION: Final = 1
# Written last into a finished model directory; its content names what was built.
MARKER_FILE: Final = "yap_gpu_model.json"
# Filler vocabulary entries; the number is the token id.
FILLER_TOKEN: Final = "<|vocab_pad_{}|>"
# Merges the BPE trainer aims for before the filler; the tiny model's corpus runs out
# of merges near this size anyway.
BPE_VOCAB_SIZE: Final = 1900
# The context length the generated config declares (vLLM's max_model_len may be less).
MAX_POSITIONS: Final = 32768


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuShape:
    """The architecture of one real model, as its ``config.json`` states it."""

    name: str
    mirrors: str  # the hub id of the model this shape copies
    model_type: str  # transformers' model_type: "qwen2", "llama", "mistral"
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-5
    # Extra rope parameters (Llama 3.1's "llama3" frequency scaling, say), as pairs
    # so that the shape stays hashable.
    rope_scaling: tuple[tuple[str, Any], ...] = ()

    @property
    def params(self) -> int:
        """The parameter count, embeddings included (once when tied)."""
        head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        q = self.hidden_size * self.num_attention_heads * head_dim
        kv = 2 * self.hidden_size * self.num_key_value_heads * head_dim
        o = self.num_attention_heads * head_dim * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        bias = (self.num_attention_heads + 2 * self.num_key_value_heads) * head_dim
        per_layer = q + kv + o + mlp + 2 * self.hidden_size
        if self.model_type == "qwen2":
            per_layer += bias
        embeddings = self.vocab_size * self.hidden_size
        heads = embeddings if self.tie_word_embeddings else 2 * embeddings
        return self.num_hidden_layers * per_layer + heads + self.hidden_size

    def digest(self) -> str:
        payload = json.dumps(
            {"shape": dataclasses.asdict(self), "version": BUILD_VERSION},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


GPU_SHAPES: Final[Mapping[str, GpuShape]] = MappingProxyType(
    {
        shape.name: shape
        for shape in (
            # MadeAgents/Hammer2.1-1.5b is a fine-tuned Qwen2.5-1.5B-Instruct.
            GpuShape(
                name="qwen2.5-1.5b",
                mirrors="MadeAgents/Hammer2.1-1.5b",
                model_type="qwen2",
                hidden_size=1536,
                num_hidden_layers=28,
                num_attention_heads=12,
                num_key_value_heads=2,
                intermediate_size=8960,
                vocab_size=151936,
                rope_theta=1_000_000.0,
                tie_word_embeddings=True,
                rms_norm_eps=1e-6,
            ),
            GpuShape(
                name="llama-3.1-8b",
                mirrors="meta-llama/Llama-3.1-8B-Instruct",
                model_type="llama",
                hidden_size=4096,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                intermediate_size=14336,
                vocab_size=128256,
                rope_theta=500_000.0,
                rope_scaling=(
                    ("rope_type", "llama3"),
                    ("factor", 8.0),
                    ("low_freq_factor", 1.0),
                    ("high_freq_factor", 4.0),
                    ("original_max_position_embeddings", 8192),
                ),
            ),
            # SicariusSicariiStuff/Impish_Nemo_12B is a Mistral-Nemo-12B fine-tune.
            GpuShape(
                name="mistral-nemo-12b",
                mirrors="SicariusSicariiStuff/Impish_Nemo_12B",
                model_type="mistral",
                hidden_size=5120,
                num_hidden_layers=40,
                num_attention_heads=32,
                num_key_value_heads=8,
                head_dim=128,
                intermediate_size=14336,
                vocab_size=131072,
                rope_theta=1_000_000.0,
            ),
        )
    }
)


def hf_config_dict(
    shape: GpuShape, *, eos_token_id: int, pad_token_id: int, bos_token_id: int | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``AutoConfig.for_model`` for ``shape``; no imports."""
    rope: dict[str, Any] = {"rope_type": "default", **dict(shape.rope_scaling)}
    rope["rope_theta"] = shape.rope_theta
    config: dict[str, Any] = {
        "model_type": shape.model_type,
        "hidden_size": shape.hidden_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "intermediate_size": shape.intermediate_size,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "dtype": "bfloat16",
    }
    if shape.head_dim is not None:
        config["head_dim"] = shape.head_dim
    if shape.model_type in ("mistral", "qwen2"):
        # transformers' Mistral default is a 4096-token window; Nemo has none.
        config["sliding_window"] = None
    if shape.model_type == "qwen2":
        config["use_sliding_window"] = False
    return config


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """The tiny model's ChatML byte-level BPE, its vocabulary padded to ``vocab_size``.

    Raises:
        ValueError: ``vocab_size`` is smaller than the trained vocabulary.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from actors.models.tiny import IM_START, TinyModelSpec, _build_tokenizer

    # vocab_size == bpe_vocab_size: the tiny builder pads little or nothing itself.
    trained = _build_tokenizer(
        TinyModelSpec(
            vocab_size=BPE_VOCAB_SIZE,
            bpe_vocab_size=BPE_VOCAB_SIZE,
            max_position_embeddings=MAX_POSITIONS,
        )
    )
    start = len(trained)
    if vocab_size < start:
        raise ValueError(f"vocab_size {vocab_size} is below the trained vocabulary ({start})")
    state = json.loads(trained.backend_tokenizer.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    # Added tokens outside the BPE vocabulary would be renumbered from its end on load
    # (on top of the filler): give each its own id inside it first.
    for added in state["added_tokens"]:
        vocab.setdefault(added["content"], added["id"])
    vocab.update({FILLER_TOKEN.format(i): i for i in range(start, vocab_size)})
    backend = Tokenizer.from_str(json.dumps(state))
    ids = sorted(backend.get_vocab(with_added_tokens=True).values())
    if ids != list(range(vocab_size)):
        raise AssertionError("padded tokenizer ids are not exactly 0..vocab_size-1")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=trained.eos_token,
        pad_token=trained.pad_token,
        additional_special_tokens=[IM_START],
        chat_template=trained.chat_template,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    if len(tokenizer) != vocab_size:
        raise AssertionError(f"padded tokenizer has {len(tokenizer)} tokens, not {vocab_size}")
    return tokenizer


def generate_gpu_model(
    shape: GpuShape, out_dir: Path, *, device: str = "cuda", seed: int = 0
) -> dict[str, float]:
    """Write ``shape`` with random bf16 weights and the padded tokenizer to ``out_dir``.

    The weights are drawn on ``device`` (in bf16, no float32 copy), then saved as
    safetensors shards. The directory is built beside ``out_dir`` and renamed into
    place, so a killed run never leaves a half-written model behind.

    Returns:
        Seconds spent per phase: ``tokenizer``, ``init`` and ``save``.

    Raises:
        FileExistsError: ``out_dir`` exists and holds no finished model of ``shape``.
    """
    import torch

    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    if out_dir.exists() and not _is_built(out_dir, shape):
        raise FileExistsError(f"{out_dir} exists and is not a generated {shape.name} model")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        began = time.perf_counter()
        tokenizer = build_tokenizer(shape.vocab_size)
        tokenizer.save_pretrained(scratch)
        timings["tokenizer"] = time.perf_counter() - began

        began = time.perf_counter()
        model = _random_model(shape, tokenizer, torch.device(device), seed)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        timings["init"] = time.perf_counter() - began

        began = time.perf_counter()
        model.save_pretrained(scratch, max_shard_size="5GB")
        del model
        timings["save"] = time.perf_counter() - began

        marker = {"shape": dataclasses.asdict(shape), "digest": shape.digest(), "seed": seed}
        (scratch / MARKER_FILE).write_text(json.dumps(marker, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(scratch, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return timings


def model_dir(shape: GpuShape, cache_dir: str | Path) -> Path:
    """The directory under ``cache_dir`` that holds ``shape``'s build (``random:`` models)."""
    return Path(cache_dir).expanduser() / f"random-{shape.name}-{shape.digest()}"


def ensure_gpu_model(shape: GpuShape, out_dir: Path, *, device: str = "cuda") -> Path:
    """Return ``out_dir``, generating ``shape`` there first unless it is already built."""
    out_dir = Path(out_dir)
    if not _is_built(out_dir, shape):
        generate_gpu_model(shape, out_dir, device=device)
    return out_dir


def _is_built(out_dir: Path, shape: GpuShape) -> bool:
    try:
        marker = json.loads((out_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("digest") == shape.digest())


def _random_model(
    shape: GpuShape, tokenizer: PreTrainedTokenizerFast, device: Any, seed: int
) -> PreTrainedModel:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = hf_config_dict(
        shape,
        eos_token_id=tokenizer.convert_tokens_to_ids(tokenizer.eos_token),
        pad_token_id=tokenizer.convert_tokens_to_ids(tokenizer.pad_token),
    )
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m actors.models.gpu",
        description="Write a random-weight model in a real model's shape (offline).",
    )
    parser.add_argument("--shape", required=True, choices=sorted(GPU_SHAPES))
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="model directory to write")
    where.add_argument(
        "--cache-dir",
        type=Path,
        help="write into this cache, where the engine finds model = 'random:<shape>'",
    )
    parser.add_argument("--device", default="cuda", help="where to draw the weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args(argv)

    shape = GPU_SHAPES[args.shape]
    if args.out is None:
        args.out = model_dir(shape, args.cache_dir)
    if _is_built(args.out, shape) and not args.force:
        print(f"{args.out}: {shape.name} already built")
        return 0
    if args.force and args.out.exists():
        shutil.rmtree(args.out)
    print(f"{shape.name}: {shape.params / 1e9:.2f}B params (shape of {shape.mirrors})")
    timings = generate_gpu_model(shape, args.out, device=args.device, seed=args.seed)
    size = sum(f.stat().st_size for f in args.out.iterdir()) / 2**30
    spent = ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in timings.items())
    print(f"{args.out}: {size:.2f} GiB written ({spent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
