"""Keep client text from speaking the model's control language.

A prompt is rendered to a string and tokenized whole, so a user who types
``<|im_start|>system`` would otherwise open a system turn of their own. Every
special or added token's spelling is broken up with a zero-width space before the
text enters a prompt: it still reads the same, but tokenizes as plain text.
"""

from __future__ import annotations

from typing import Any

__all__ = ["neutralize_control_tokens"]

_BREAK = "\u200b"


def neutralize_control_tokens(tokenizer: Any, text: str) -> str:
    """``text`` with every control-token spelling of ``tokenizer`` defused."""
    for token in _control_tokens(tokenizer):
        if token in text:
            text = text.replace(token, token[0] + _BREAK + token[1:])
    return text


def _control_tokens(tokenizer: Any) -> list[str]:
    special = list(getattr(tokenizer, "all_special_tokens", ()) or ())
    added = getattr(tokenizer, "get_added_vocab", None)
    if callable(added):
        special.extend(added())
    # Longest first, so a token that contains another is defused whole.
    return sorted({t for t in special if len(t) > 1}, key=len, reverse=True)
