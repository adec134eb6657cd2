"""Tokenizers for the prompt tests: a word-level stub and real fast tokenizers built in memory."""

from __future__ import annotations

import re
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHATML_TEMPLATE",
    "FOLDING_TEMPLATE",
    "SET_TIMER",
    "TRIMMING_TEMPLATE",
    "WordTokenizer",
    "byte_bpe_tokenizer",
]

# A tool with a required parameter, beside take_screenshot which has none.
SET_TIMER = {
    "name": "set_timer",
    "description": "Start a countdown timer.",
    "parameters": {
        "type": "object",
        "properties": {"minutes": {"type": "integer"}},
        "required": ["minutes"],
    },
}

# ChatML as Qwen2 renders it: every message, system ones included, in its own block.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Llama-3 style: a begin token, headers, and message content trimmed by the template.
TRIMMING_TEMPLATE = (
    "<|begin|>{% for m in messages %}<|header|>{{ m['role'] }}<|end_header|>\n\n"
    "{{ m['content'] | trim }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|header|>assistant<|end_header|>\n\n{% endif %}"
)
# Mistral style: system messages are folded into the last user message, so a
# rendering of the system messages alone is not a prefix of the full prompt.
FOLDING_TEMPLATE = (
    "{% set ns = namespace(system='') %}"
    "{% for m in messages if m['role'] == 'system' %}"
    "{% set ns.system = ns.system + m['content'] + '\n\n' %}{% endfor %}"
    "<s>{% for m in messages if m['role'] != 'system' %}"
    "[INST] {% if loop.last %}{{ ns.system }}{% endif %}{{ m['content'] }}[/INST]"
    "{% endfor %}{% if not (messages | rejectattr('role', 'eq', 'system') | list) %}"
    "{{ ns.system }}{% endif %}"
)

_CORPUS = [
    "hello there, how are you doing today? I was looking at my screen.",
    "the quick brown fox jumps over the lazy dog; naïve café déjà vu",
    "conversation so far: user said hi and the assistant said hey",
]


class WordTokenizer:
    """One token per word with its leading whitespace: exact, reversible, no files."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._words: list[str] = []
        self.encode_calls = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.encode_calls += 1
        ids = []
        for word in re.findall(r"\s*\S+|\s+", text):
            if word not in self._ids:
                self._ids[word] = len(self._words)
                self._words.append(word)
            ids.append(self._ids[word])
        return ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(self._words[i] for i in token_ids)

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        *,
        tokenize: bool = False,
        add_generation_prompt: bool = False,
    ) -> str:
        parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conversation]
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)


def byte_bpe_tokenizer(chat_template: str = CHATML_TEMPLATE) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer, trained in memory, with ``chat_template``."""
    specials = ["<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = chat_template
    return tokenizer
