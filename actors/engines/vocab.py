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

__all__ = ["FILLER_TOKEN", "filler_ids", "trained_ids"]

FILLER_TOKEN: Final = re.compile(r"<\|(?:reserved(?:_special_token)?|vocab_pad)_\d+\|>")


def filler_ids(tokenizer: Any, vocab_size: int) -> set[int]:
    """Ids below ``vocab_size`` that are fillers, or past the end of ``tokenizer``."""
    ids = set(range(len(tokenizer), vocab_size))
    ids.update(i for token, i in tokenizer.get_vocab().items() if FILLER_TOKEN.fullmatch(token))
    return {i for i in ids if i < vocab_size}


def trained_ids(tokenizer: Any) -> list[int]:
    """The ids of ``tokenizer`` that are not fillers, in order."""
    fillers = filler_ids(tokenizer, len(tokenizer))
    return [i for i in range(len(tokenizer)) if i not in fillers]
