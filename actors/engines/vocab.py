"""Which token ids a model should never sample: the fillers that pad its vocabulary.

Tokenizers are padded up to the model's vocabulary size: the tiny models with added
``<|reserved_N|>`` tokens, Llama 3 with reserved special tokens, the GPU benchmark's
random-weight models with ``<|vocab_pad_N|>`` entries; a model's embedding may also
be larger than its tokenizer. None of these were ever trained on, and the ones that
are not special tokens decode to their own names, so a random-weight model that
samples them streams filler names.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["FILLER_TOKEN", "MAX_ALLOWED_IDS", "filler_ids", "sampleable_ids", "trained_ids"]

FILLER_TOKEN: Final = re.compile(r"<\|(?:reserved(?:_special_token)?|vocab_pad)_\d+\|>")
# vLLM 0.26's V2 model runner, its default for dense models, takes at most this many
# allowed_token_ids per request (vllm/v1/worker/gpu/sample/logit_bias.py).
MAX_ALLOWED_IDS: Final = 1024


def filler_ids(tokenizer: Any, vocab_size: int) -> set[int]:
    """Ids below ``vocab_size`` that are fillers, or past the end of ``tokenizer``."""
    ids = set(range(len(tokenizer), vocab_size))
    ids.update(i for token, i in tokenizer.get_vocab().items() if FILLER_TOKEN.fullmatch(token))
    return {i for i in ids if i < vocab_size}


def trained_ids(tokenizer: Any) -> list[int]:
    """The ids of ``tokenizer`` that are not fillers, in order."""
    fillers = filler_ids(tokenizer, len(tokenizer))
    return [i for i in range(len(tokenizer)) if i not in fillers]


def sampleable_ids(tokenizer: Any, limit: int = MAX_ALLOWED_IDS) -> list[int]:
    """Up to ``limit`` trained ids that decode, alone, to whole text.

    What a random-weight model is let sample: no fillers, no special tokens, no
    control characters and no lone byte of a multibyte character (which decodes to
    U+FFFD and re-encodes into several tokens), so that its reply, fed back as
    history, keeps about its length.
    """
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ids = []
    for token_id in trained_ids(tokenizer):
        if token_id in special:
            continue
        text = tokenizer.decode([token_id])
        if text and "\ufffd" not in text and text.replace("\n", " ").isprintable():
            ids.append(token_id)
            if len(ids) == limit:
                break
    return ids
