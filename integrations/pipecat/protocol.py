"""The client side of the edge's protocol, without I/O: frames in, what they mean out.

Wire frames carry no turn id; only a ``start``'s ``ack`` names its turn. One socket
carries every turn of a pipeline, and an interrupted turn may still have frames in
flight when the next ``start`` goes out. The ``ack`` is the boundary: the edge sends
nothing of an older turn after the new turn's ack, so everything before it is
dropped, with no drain timer. The one frame before the ack that is about this
``start`` is an ``error`` refusing it; an error with a code that only ends a running
turn (``actor_lost``, say) is an older turn's and dropped too.

Replies to the other requests (``pong``, the ``ack`` of ``set_persona``,
``warmed``) are read the same way by :class:`ReplyReader`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from integrations.pipecat.codes import TURN_FAILURE_CODES

__all__ = [
    "Acked",
    "Refused",
    "ReplyReader",
    "TextDelta",
    "ToolCallRequest",
    "ToolDecision",
    "TurnDone",
    "TurnEvent",
    "TurnFailed",
    "TurnReader",
    "tool_call_id",
    "tool_calls",
]

_UNKNOWN_ERROR: Final = "unknown_error"


@dataclass(frozen=True, slots=True)
class Acked:
    """The edge took the ``start``; this turn's frames follow."""

    turn_id: str
    chat_model: str | None


@dataclass(frozen=True, slots=True)
class Refused:
    """The edge refused the request (no ack, no done follows)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ToolDecision:
    """The tool actor's decision: ``status`` yes or no, and Hammer's calls as ``raw``."""

    status: str
    raw: Any


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class TurnFailed:
    """The acknowledged turn failed; its ``done`` follows."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class TurnDone:
    """The turn's last frame: usage of a completed turn, or the failure's code."""

    usage: Mapping[str, Any]
    error_code: str | None = None
    cancelled: bool = False


TurnEvent = Acked | Refused | ToolDecision | TextDelta | TurnFailed | TurnDone


def _error(frame: Mapping[str, Any]) -> tuple[str, str]:
    code = frame.get("error_code")
    message = frame.get("message")
    return (
        code if isinstance(code, str) and code else _UNKNOWN_ERROR,
        message if isinstance(message, str) else "",
    )


@dataclass(slots=True)
class TurnReader:
    """Reads the frames of one ``start``; feed every frame the socket gives."""

    acked: bool = False
    finished: bool = False
    _decided: bool = field(default=False, repr=False)

    def feed(self, frame: Mapping[str, Any]) -> TurnEvent | None:
        """What ``frame`` means for this turn; None for frames of older exchanges."""
        if self.finished:
            return None
        kind = frame.get("type")
        if not self.acked:
            if kind == "ack" and frame.get("for") == "start":
                self.acked = True
                turn_id = frame.get("turn_id")
                models = frame.get("models")
                chat = models.get("chat") if isinstance(models, Mapping) else None
                return Acked(
                    turn_id=turn_id if isinstance(turn_id, str) else "",
                    chat_model=chat if isinstance(chat, str) else None,
                )
            if kind == "error":
                code, message = _error(frame)
                if code in TURN_FAILURE_CODES:
                    return None
                self.finished = True
                return Refused(code, message)
            return None
        if kind == "toolcall" and not self._decided:
            self._decided = True
            status = frame.get("status")
            return ToolDecision(status if isinstance(status, str) else "", frame.get("raw"))
        if kind == "token":
            text = frame.get("text")
            return TextDelta(text) if isinstance(text, str) and text else None
        if kind == "error":
            return TurnFailed(*_error(frame))
        if kind == "done":
            self.finished = True
            usage = frame.get("usage")
            code = frame.get("error_code")
            return TurnDone(
                usage=usage if isinstance(usage, Mapping) else {},
                error_code=code if isinstance(code, str) else None,
                cancelled=frame.get("cancelled") is True,
            )
        return None  # final (the tokens were streamed), warmed, pong


@dataclass(slots=True)
class ReplyReader:
    """Waits for the reply of a ``ping``, ``set_persona`` or ``warm_persona``.

    Args:
        kind: the reply's ``type`` (``pong``, ``ack``, ``warmed``).
        ack_for: for an ``ack``, what it must be ``for``.
        any_error: take every error as the refusal (for a fresh socket, where no
            older turn can speak, or a warm, whose errors share the turn codes).
    """

    kind: str
    ack_for: str | None = None
    any_error: bool = False

    def feed(self, frame: Mapping[str, Any]) -> Mapping[str, Any] | Refused | None:
        """The reply, the refusal, or None for a frame of something else."""
        kind = frame.get("type")
        if kind == self.kind and (self.ack_for is None or frame.get("for") == self.ack_for):
            return frame
        if kind == "error":
            code, message = _error(frame)
            if self.any_error or code not in TURN_FAILURE_CODES:
                return Refused(code, message)
        return None


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    name: str
    arguments: Mapping[str, Any]


def tool_calls(raw: Any, default_name: str) -> list[ToolCallRequest]:
    """The calls in a yes decision's ``raw``; one ``default_name`` call if none parse.

    ``raw`` is Hammer's list of ``{"name", "arguments"}`` when it parsed, else its
    text. A yes always means a call, so an unreadable one is still the screenshot.
    """
    calls: list[ToolCallRequest] = []
    if isinstance(raw, list):
        for item in raw:
            if not isinstance(item, Mapping):
                continue
            name = item.get("name")
            arguments = item.get("arguments")
            if isinstance(name, str) and name:
                calls.append(
                    ToolCallRequest(name, arguments if isinstance(arguments, Mapping) else {})
                )
    return calls or [ToolCallRequest(default_name, {})]


def tool_call_id(turn_id: str, index: int = 0) -> str:
    """The Pipecat ``tool_call_id`` of a turn's ``index``-th call: stable and unique."""
    return f"yap_{turn_id}" if index == 0 else f"yap_{turn_id}_{index}"
