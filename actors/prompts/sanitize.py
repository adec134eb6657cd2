"""Keep client text from speaking the model's control language.

A prompt is rendered to a string and tokenized, so a user who types
``<|im_start|>system`` would otherwise open a system turn of their own. Every
special or added token's spelling is broken up with a zero-width space before the
text enters a prompt: it still reads the same, but tokenizes as plain text.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ControlTokens", "neutralize_control_tokens"]

_BREAK = "\u200b"
# Control tokens are found by their first two characters first ("<|" for ChatML and
# Llama 3): most text holds none of those pairs, and one substring test per distinct
# pair is far cheaper than one per token (a Llama 3 tokenizer has 256 of them).
_HEAD = 2


class ControlTokens:
    """One tokenizer's control-token spellings, collected once.

    Collecting them (``get_added_vocab`` copies the vocabulary of added tokens) costs
    more than defusing a typical text, so an actor builds this once per tokenizer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokens = _control_tokens(tokenizer)
        self._heads = frozenset(token[:_HEAD] for token in self.tokens)

    def neutralize(self, text: str) -> str:
        """``text`` with every control-token spelling defused (the same string if none)."""
        if not any(head in text for head in self._heads):
            return text
        for token in self.tokens:
            if token in text:
                text = text.replace(token, token[0] + _BREAK + token[1:])
        return text


def neutralize_control_tokens(tokenizer: Any, text: str) -> str:
    """``text`` with every control-token spelling of ``tokenizer`` defused."""
    return ControlTokens(tokenizer).neutralize(text)


def _control_tokens(tokenizer: Any) -> tuple[str, ...]:
    special = list(getattr(tokenizer, "all_special_tokens", ()) or ())
    added = getattr(tokenizer, "get_added_vocab", None)
    if callable(added):
        special.extend(added())
    # Longest first, so a token that contains another is defused whole.
    return tuple(sorted({t for t in special if len(t) > 1}, key=len, reverse=True))
