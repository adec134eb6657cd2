"""Token-budget trimming with the model's own tokenizer.

The user utterance keeps its beginning (what the user asked first matters most) and
the history keeps its end (the most recent turns matter most). The utterance is cut
exactly: encoded, sliced and decoded back. The history is cut at line boundaries, in
steps, so that its start (and the prompt's cacheable prefix) stays put as it grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

from actors.engines.base import Tokenizer

__all__ = [
    "DEFAULT_HISTORY_MAX_TOKENS",
    "DEFAULT_USER_UTT_MAX_TOKENS",
    "Keep",
    "apply_history_cut",
    "fits_by_bytes",
    "history_cut",
    "line_units",
    "trim_history",
    "trim_to_tokens",
    "trim_tokens_stepped",
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


def line_units(text: str) -> list[str]:
    """``text`` cut into units that each start a line: after a newline, before a non-space.

    A canonical history (``bus.history``) is one unit per message line, each with its
    newline except the last. Lines that start with whitespace (or are empty) stay with
    the unit before, so every unit but the first starts with a non-space character.
    That is where the byte-level BPE tokenizers we serve always start a new
    pre-token, which lets the actors encode a history unit by unit and keep the ids
    (``actors.prompts.units``). ``"".join(line_units(text)) == text`` always holds.
    """
    units: list[str] = []
    current: str | None = None
    for piece in text.split("\n"):
        if current is None:
            current = piece
        elif piece and not piece[0].isspace():
            units.append(current + "\n")
            current = piece
        else:
            current = current + "\n" + piece
    units.append(current or "")
    return [unit for unit in units if unit]


def history_cut(counts: Sequence[int], max_tokens: int) -> int:
    """Where a history of units with these token counts starts once trimmed.

    Returns the index of the first unit kept: 0 when everything fits, ``len(counts)``
    when no run of whole trailing units fits (the last unit alone is over the budget;
    the caller then cuts inside it). The cut moves in steps of a third of the budget,
    counted from the start, and lands on the first unit boundary at or after the step:
    as the history grows at its end, the cut (and so the prompt's prefix up to the
    history) stays put until the history has grown by another step.

    Raises:
        ValueError: ``max_tokens`` is negative.
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    total = sum(counts)
    if total <= max_tokens:
        return 0
    step = max(1, max_tokens // 3)
    drop = -(-(total - max_tokens) // step) * step  # whole steps, rounded up
    dropped = 0
    for index, count in enumerate(counts):
        if dropped >= drop:
            return index
        dropped += count
    return len(counts)


def trim_history(tokenizer: Tokenizer, text: str, max_tokens: int) -> str:
    """Keep the recent end of a transcript, cutting whole lines from its front in steps.

    A conversation's history grows at its end from turn to turn. Keeping exactly the
    last ``max_tokens`` tokens would move its first token on every turn once it is
    over the budget, and the prefix cache would never again reuse it. Instead whole
    lines (``line_units``) are dropped from the front, in steps of a third of the
    budget counted from the start (``history_cut``): for several turns in a row the
    history, and the prompt up to it, starts the same. Only when the last line alone
    is over the budget is the cut made inside it, in token steps.

    Token counts are those of each line encoded on its own; this is the text-path
    reference of what the actors do on cached ids.

    Args:
        tokenizer: the serving model's tokenizer.
        text: the transcript, oldest first.
        max_tokens: the budget.

    Raises:
        ValueError: ``max_tokens`` is negative.
    """
    if fits_by_bytes(text, max_tokens):
        return text if max_tokens else ""
    units = line_units(text)
    counts = [len(tokenizer.encode(unit, add_special_tokens=False)) for unit in units]
    return apply_history_cut(tokenizer, units, history_cut(counts, max_tokens), max_tokens)


def apply_history_cut(tokenizer: Tokenizer, units: Sequence[str], cut: int, max_tokens: int) -> str:
    """The history from unit ``cut`` on; inside its last unit when ``cut`` is past the end."""
    if cut < len(units):
        return "".join(units[cut:])
    return trim_tokens_stepped(tokenizer, units[-1], max_tokens)


def fits_by_bytes(text: str, max_tokens: int) -> bool:
    """Whether ``text`` fits ``max_tokens`` without encoding it (or the budget is 0).

    Every token covers at least one UTF-8 byte (see ``trim_to_tokens``), so a text of
    fewer bytes than the budget fits.

    Raises:
        ValueError: ``max_tokens`` is negative.
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    return max_tokens == 0 or (len(text) < max_tokens and len(text.encode("utf-8")) < max_tokens)


def trim_tokens_stepped(tokenizer: Tokenizer, text: str, max_tokens: int) -> str:
    """Keep the end of ``text`` within ``max_tokens``, its front cut in token steps.

    The fallback of ``trim_history`` for a line over the whole budget: the front is
    cut in steps of a third of the budget, counted from the start of the text, and the
    result holds between two thirds of the budget and the whole of it.

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
    if fits_by_bytes(text, max_tokens):
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
