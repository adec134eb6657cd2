"""The locally built tiny Qwen2 model: cache, determinism, tokenizer, chat template."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.models import TinyModelSpec, ensure_tiny_model
from actors.models.tiny import CORPUS

SAMPLES = (
    "héllo 👋",
    '[{"name": "take_screenshot", "arguments": {}}]',
    "[]",
    "Hey, can you look at my screen?\n  It's 3:45 pm — already!",
    "日本語のテキストと émojis 🎉🎉",
)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared by every test module in the session, so the model is built once.
    return tmp_path_factory.getbasetemp() / "tiny-models"


@pytest.fixture(scope="module")
def model_dir(model_cache: Path) -> Path:
    return ensure_tiny_model(model_cache)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


def test_builds_a_loadable_qwen2(model_dir: Path, tokenizer) -> None:
    """The built directory loads as a small tied-embedding Qwen2 with a matching tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.config
    assert config.model_type == "qwen2"
    assert (model_dir / "model.safetensors").is_file()
    assert (config.hidden_size, config.num_hidden_layers) == (64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.max_position_embeddings == 8192
    assert config.tie_word_embeddings
    assert len(tokenizer) == config.vocab_size == 2048
    assert tokenizer.eos_token == "<|im_end|>"
    assert config.eos_token_id == tokenizer.eos_token_id


def test_second_call_reuses_the_cache(model_cache: Path, model_dir: Path) -> None:
    """Asking again returns the same directory without rebuilding or leaving temp dirs."""
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(model_cache) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before
    assert [p for p in model_cache.iterdir() if p.is_dir()] == [model_dir]


def test_concurrent_builds_agree(tmp_path: Path, model_dir: Path) -> None:
    """Two builders racing on an empty cache produce one directory, bit-identical to others."""
    barrier = threading.Barrier(2)
    results: list[Path] = []

    def build() -> None:
        barrier.wait()
        results.append(ensure_tiny_model(tmp_path))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    assert results[0] == results[1]
    assert results[0].name == model_dir.name
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == [results[0]]
    for name in ("model.safetensors", "tokenizer.json"):
        assert (results[0] / name).read_bytes() == (model_dir / name).read_bytes()


def test_spec_change_builds_elsewhere(tmp_path: Path, model_dir: Path) -> None:
    """A different spec lands in a differently hashed directory."""
    other = ensure_tiny_model(tmp_path, spec=TinyModelSpec(seed=1))
    assert other.name.startswith("tiny-qwen2-")
    assert other.name != model_dir.name


def test_unknown_name_is_refused(tmp_path: Path) -> None:
    """An unregistered tiny model name raises ValueError."""
    with pytest.raises(ValueError, match="unknown tiny model"):
        ensure_tiny_model(tmp_path, "tiny-nope")


@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_round_trips(tokenizer, text: str) -> None:
    """Encoding then decoding gives back the text, multibyte characters included."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_emoji_spans_several_tokens(tokenizer) -> None:
    """An emoji outside the corpus is split into byte tokens (what detokenizers must handle)."""
    assert len(tokenizer.encode("👋", add_special_tokens=False)) > 1


def test_loaded_tokenizer_matches_the_trained_one(model_dir: Path, tokenizer) -> None:
    """AutoTokenizer encodes exactly like the saved tokenizers pipeline."""
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    for text in (CORPUS, *SAMPLES):
        assert tokenizer.encode(text, add_special_tokens=False) == raw.encode(text).ids


def test_special_tokens_are_single_ids(tokenizer) -> None:
    """ChatML markers encode to one id each, even inside text."""
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        ids = tokenizer.encode(f"a{token}b", add_special_tokens=False)
        assert tokenizer.convert_tokens_to_ids(token) in ids


def test_chat_template_renders_chatml(tokenizer) -> None:
    """The chat template renders ChatML with an assistant header when asked."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
