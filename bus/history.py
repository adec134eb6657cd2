"""The canonical conversation history: one format that every client and actor agrees on.

A history is plain text, oldest first, one line per message::

    User: what is on my screen?
    Assistant: A terminal with a failing test.

Each line is a role label and the message with its whitespace collapsed (the same
normalisation as the ``final`` frame's ``normalized_text``), lines joined by a single
newline and no trailing one. It only ever grows at its end. That is what lets the
chat model's prefix cache hit turn after turn: the next turn's history starts with
this turn's, byte for byte, so the chat actor can compute it (and prefill it) as
soon as a reply is done. Clients that follow the format get those cache hits;
clients that send free text keep working, without them.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "ASSISTANT_LABEL",
    "USER_LABEL",
    "Role",
    "append_message",
    "append_turn",
    "cap_history",
    "message_line",
    "normalize_text",
]

Role = Literal["user", "assistant"]

USER_LABEL: Final = "User: "
ASSISTANT_LABEL: Final = "Assistant: "
_LABELS: Final[dict[Role, str]] = {"user": USER_LABEL, "assistant": ASSISTANT_LABEL}


def normalize_text(text: str) -> str:
    """``text`` with every run of whitespace made one space, and none at the ends."""
    return " ".join(text.split())


def message_line(role: Role, text: str) -> str:
    """One message as a history line (no newline); empty when the text is blank."""
    body = normalize_text(text)
    return f"{_LABELS[role]}{body}" if body else ""


def append_message(history: str, role: Role, text: str) -> str:
    """``history`` with one message appended; a blank message appends nothing."""
    line = message_line(role, text)
    if not line:
        return history
    return f"{history}\n{line}" if history else line


def append_turn(history: str, user_utterance: str, reply: str) -> str:
    """``history`` followed by one exchange: the user's words, then the reply."""
    return append_message(append_message(history, "user", user_utterance), "assistant", reply)


def cap_history(history: str, max_chars: int) -> str:
    """Keep the newest lines of ``history`` within ``max_chars``, cutting in steps.

    Cutting one line at a time would move the history's start on every turn once it
    is over the cap, so no turn would reuse the previous one's prefix. Whole lines
    are dropped from the front until the history fits in two thirds of the cap (or
    one line is left): the start then stays put for the next third's worth of
    turns. A last line longer than the cap leaves nothing.

    Raises:
        ValueError: ``max_chars`` is negative.
    """
    if max_chars < 0:
        raise ValueError(f"max_chars must be >= 0, got {max_chars}")
    if len(history) <= max_chars:
        return history
    target = max_chars * 2 // 3
    lines = history.split("\n")
    size = len(history)
    start = 0
    while start < len(lines) - 1 and size > target:
        size -= len(lines[start]) + 1
        start += 1
    kept = "\n".join(lines[start:])
    return kept if len(kept) <= max_chars else ""  # one line longer than the cap
