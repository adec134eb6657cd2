"""Builders for every frame the edge sends, so their shapes live in one place."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "FrameEncoder",
    "ack_set_persona",
    "ack_start",
    "done",
    "error",
    "final",
    "pong",
    "token",
    "toolcall",
    "warmed",
]

Frame = dict[str, Any]


class FrameEncoder:
    """JSON-encodes frames; one per process, reused (msgspec keeps a buffer)."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()

    def encode(self, frame: Frame) -> str:
        return self._encoder.encode(frame).decode()

    def encode_bytes(self, frame: Frame) -> bytes:
        """UTF-8 JSON, what a text frame carries: no str round trip on the hot path."""
        return self._encoder.encode(frame)


def error(code: str, message: str, **extra: Any) -> Frame:
    return {"type": "error", "error_code": code, "message": message, **extra}


def ack_start(
    *,
    session_id: str,
    seed: int,
    now: str,
    assistant_gender: str,
    persona_style: str,
    persona_text_override: bool,
    chat_model: str | None,
    tool_model: str | None,
    turn_id: str,
) -> Frame:
    return {
        "type": "ack",
        "for": "start",
        "ok": True,
        "session_id": session_id,
        "seed": seed,
        "now": now,
        "assistant_gender": assistant_gender,
        "persona_style": persona_style,
        "persona_text_override": persona_text_override,
        "models": {"chat": chat_model, "tool": tool_model},
        "turn_id": turn_id,
    }


def ack_set_persona(
    *,
    session_id: str,
    changed: dict[str, Any],
    assistant_gender: str | None,
    persona_style: str,
    persona_text_override: bool,
) -> Frame:
    return {
        "type": "ack",
        "for": "set_persona",
        "ok": True,
        "session_id": session_id,
        "changed": changed,
        "assistant_gender": assistant_gender,
        "persona_style": persona_style,
        "persona_text_override": persona_text_override,
    }


def toolcall(status: str, raw: Any) -> Frame:
    return {"type": "toolcall", "status": status, "raw": raw}


def token(text: str) -> Frame:
    return {"type": "token", "text": text}


def final(text: str) -> Frame:
    return {"type": "final", "normalized_text": text}


def done(*, usage: dict[str, int] | None = None, cancelled: bool = False) -> Frame:
    if cancelled:
        return {"type": "done", "cancelled": True}
    return {"type": "done", "usage": usage or {}}


def warmed(segment: str, size: int) -> Frame:
    return {"type": "warmed", "segment": segment, "bytes": size}


def pong() -> Frame:
    return {"type": "pong"}
