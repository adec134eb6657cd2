"""What one Pipecat context asks of the edge: the utterance and the history before it.

A context is a list of OpenAI-style messages. The user messages at its end (the
user's turn, which the aggregator may have split into several) are this turn's
``user_utterance``; the conversation before them becomes ``history_text`` in the
canonical format of :mod:`bus.history`. Consecutive messages of one role share one
line, so a turn whose utterance was "a" then "b" comes back next time as the same
``User: a b`` line that the chat actor appended after the turn: the history of the
next turn starts with this turn's, byte for byte, and the prefix cache hits.

System, developer and tool messages carry nothing the edge uses (the persona is the
edge's, tools are the tool actor's), so they are skipped; so are assistant messages
that only call a tool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bus.history import Role, append_message, cap_history, normalize_text

__all__ = ["TurnInput", "message_text", "turn_input"]

# Roles that neither end the user's turn nor enter the history.
_SKIPPED_ROLES: Final = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class TurnInput:
    """The ``user_utterance`` and ``history_text`` of one ``start``."""

    user_utterance: str
    history_text: str


def message_text(message: object) -> str:
    """The text of a standard message: its string content, or its text parts joined.

    Messages in a service's own format (not mappings) and parts that are not text
    (images, audio) give nothing.
    """
    if not isinstance(message, Mapping):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def _role(message: object) -> str | None:
    if not isinstance(message, Mapping):
        return None
    role = message.get("role")
    return role if isinstance(role, str) else None


def turn_input(messages: Sequence[Any], *, max_history_chars: int) -> TurnInput:
    """Split ``messages`` into this turn's utterance and the history before it.

    The utterance is empty when the context does not end with the user speaking
    (after a tool result, say): there is nothing to answer.

    Args:
        messages: the context's messages, oldest first.
        max_history_chars: cap on ``history_text``, applied with
            :func:`bus.history.cap_history` so the start of the history moves in
            steps rather than every turn.
    """
    end = len(messages)
    utterance: list[str] = []
    while end > 0:
        message = messages[end - 1]
        role = _role(message)
        if role in _SKIPPED_ROLES:
            end -= 1
        elif role == "user":
            utterance.append(message_text(message))
            end -= 1
        else:
            break
    utterance.reverse()
    history = ""
    line_role: Role | None = None
    line: list[str] = []
    for message in messages[:end]:
        kind = _role(message)
        if kind not in ("user", "assistant"):
            continue
        role: Role = "user" if kind == "user" else "assistant"
        text = normalize_text(message_text(message))
        if not text:
            continue  # an assistant message that only called a tool
        if role != line_role:
            if line_role is not None:
                history = append_message(history, line_role, " ".join(line))
            line_role, line = role, []
        line.append(text)
    if line_role is not None:
        history = append_message(history, line_role, " ".join(line))
    return TurnInput(
        user_utterance=normalize_text(" ".join(utterance)),
        history_text=cap_history(history, max_history_chars),
    )
