"""Exact token-budget trimming with the model's own tokenizer.

The user utterance keeps its beginning (what the user asked first matters most) and
the history keeps its end (the most recent turns matter most). Counting is exact:
the text is encoded with the serving model's tokenizer, sliced, and decoded back.
"""

from __future__ import annotations

from typing import Final, Literal

from actors.engines.base import Tokenizer

__all__ = [
    "DEFAULT_HISTORY_MAX_TOKENS",
    "DEFAULT_USER_UTT_MAX_TOKENS",
    "Keep",
    "trim_history",
    "trim_to_tokens",
]

Keep = Literal["start", "end"]

DEFAULT_HISTORY_MAX_TOKENS: Final = 3000
DEFAULT_USER_UTT_MAX_TOKENS: Final = 350

# What a byte-level decoder prints for a byte sequence cut in the middle of a
# character; a slice boundary can land inside a multi-byte character.
_REPLACEMENT: Final = "\ufffd"


def trim_to_tokens(tokenizer: Tokenizer, text: str, max_tokens: int, keep: Keep) -> str:
    """Cut ``text`` to at most ``max_tokens`` tokens of ``tokenizer``.

    The result is the text of the first (``"start"``) or last (``"end"``) tokens of
    ``text``, as many as fit: it encodes to at most ``max_tokens`` tokens on its own.

    Text within the budget comes back unchanged (the same string, not a re-decoded
    copy). Texts short enough that they cannot exceed the budget are not tokenized
    at all: every token of a byte-level BPE or byte-fallback SentencePiece tokenizer
    covers at least one UTF-8 byte, plus at most one dummy-prefix token, so a text
    of fewer than ``max_tokens`` bytes always fits. (Tokenizers whose normalizer
    expands text, such as NFKC, could break that bound; no chat model we serve
    uses one.) A character split by the cut is dropped rather than kept as a
    replacement character.

    Args:
        tokenizer: the serving model's tokenizer.
        text: the text to trim.
        max_tokens: the budget; 0 gives the empty string.
        keep: ``"start"`` keeps the first tokens, ``"end"`` keeps the last ones.

    Raises:
        ValueError: ``max_tokens`` is negative or ``keep`` is not start/end.
    """
    if keep not in ("start", "end"):
        raise ValueError(f"keep must be 'start' or 'end', got {keep!r}")
    ids = _ids_over_budget(tokenizer, text, max_tokens)
    if ids is None:
        return text if max_tokens else ""
    # Re-encoding a cut text can give more tokens than were kept: "naïve" may be one
    # token, its cut "na" two. Cut further by the overshoot until the result fits.
    cut = max_tokens
    while cut > 0:
        trimmed = _decode_slice(tokenizer, text, ids, cut, keep)
        overshoot = len(tokenizer.encode(trimmed, add_special_tokens=False)) - max_tokens
        if overshoot <= 0:
            return trimmed
        cut -= overshoot
    return ""


def trim_history(tokenizer: Tokenizer, text: str, max_tokens: int) -> str:
    """Keep the recent end of a transcript, cutting its front in whole steps.

    A conversation's history grows at its end from turn to turn. Keeping exactly the
    last ``max_tokens`` tokens would move its first token on every turn once it is
    over the budget, and the prefix cache would never again reuse it. Instead the
    front is cut in steps of a third of the budget, counted from the start of the
    text: the cut only moves when the history has grown by another step, so for
    several turns in a row the history (and the prompt up to it) starts the same.
    The result holds between two thirds of the budget and the whole of it.

    Args:
        tokenizer: the serving model's tokenizer.
        text: the transcript, oldest first.
        max_tokens: the budget.

    Raises:
        ValueError: ``max_tokens`` is negative.
    """
    ids = _ids_over_budget(tokenizer, text, max_tokens)
    if ids is None:
        return text if max_tokens else ""
    step = max(1, max_tokens // 3)
    drop = -(-(len(ids) - max_tokens) // step) * step  # whole steps, rounded up
    trimmed = _decode_slice(tokenizer, text, ids, len(ids) - drop, "end")
    if len(tokenizer.encode(trimmed, add_special_tokens=False)) <= max_tokens:
        return trimmed
    return trim_to_tokens(tokenizer, text, max_tokens, "end")  # a re-encoding overshoot


def _ids_over_budget(tokenizer: Tokenizer, text: str, max_tokens: int) -> list[int] | None:
    """The ids of ``text`` when it needs cutting to ``max_tokens``; None when it fits
    (or when the budget is 0, where there is nothing to keep).

    Every token covers at least one UTF-8 byte (see ``trim_to_tokens``), so a text of
    fewer bytes than the budget is not tokenized at all.
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    if max_tokens == 0:
        return None
    if len(text) < max_tokens and len(text.encode("utf-8")) < max_tokens:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids if len(ids) > max_tokens else None


def _decode_slice(tokenizer: Tokenizer, text: str, ids: list[int], cut: int, keep: Keep) -> str:
    """The first (or last) ``cut`` tokens of ``ids`` as text, without broken characters."""
    if keep == "start":
        trimmed = tokenizer.decode(ids[:cut])
        while trimmed.endswith(_REPLACEMENT) and not text.startswith(trimmed):
            trimmed = trimmed[:-1]
    else:
        trimmed = tokenizer.decode(ids[-cut:])
        while trimmed.startswith(_REPLACEMENT) and not text.endswith(trimmed):
            trimmed = trimmed[1:]
    return trimmed
