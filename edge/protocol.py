"""The client side of the Yap protocol, without I/O.

``ClientProtocol.parse`` takes one WebSocket message and returns a validated
message Struct or raises ``ProtocolError`` carrying the stable error code; it never
awaits and never touches a socket, so it is tested synchronously.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from bus import codes
from bus.persona import PERSONA_STYLES, USER_IDENTITIES, normalize_gender
from bus.subjects import InvalidSessionId, validate_session_id
from edge.errors import ProtocolError
from edge.messages import (
    MESSAGE_TYPES,
    ClientMessage,
    SetPersonaMessage,
    StartMessage,
    WarmHistoryMessage,
    WarmPersonaMessage,
)

__all__ = ["ClientProtocol", "ProtocolLimits"]

# msgspec names the failing field in its messages: "Object missing required field
# `x`" and "... - at `$.x`". We turn those into stable codes and keep the text.
_MISSING = re.compile(r"missing required field `([^`]+)`")
# A \u escape of a UTF-16 surrogate that is not half of a high-low pair: not a
# character, so strict JSON refuses it, but msgspec's message for a lone high
# surrogate ("Input data was truncated") would send the client looking elsewhere.
# Escaped backslashes (an even run) in front mean the "\u" is text, not an escape.
_LONE_SURROGATE = re.compile(
    r"(?<!\\)(?:\\\\)*"
    r"(?:\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<![dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


class ProtocolLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_utterance_chars: int = 16_000
    max_history_chars: int = 256_000
    max_persona_chars: int = 64_000


class ClientProtocol:
    """Parses and validates client messages; holds no connection state."""

    def __init__(self, limits: ProtocolLimits) -> None:
        self._limits = limits
        self._json = msgspec.json.Decoder()

    def parse(self, data: str | bytes) -> ClientMessage:
        """Decode one WebSocket message.

        Raises:
            ProtocolError: with ``invalid_message`` for binary frames and non-objects,
                ``invalid_json``, ``missing_field``, ``unknown_message_type``,
                ``invalid_field``, ``invalid_session_id`` or ``field_too_long``.
        """
        if isinstance(data, bytes):
            raise ProtocolError(
                codes.INVALID_MESSAGE, "binary frames are not accepted; send JSON text"
            )
        try:
            obj = self._json.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:  # deep nesting: RecursionError
            raise ProtocolError(codes.INVALID_JSON, _json_error(data, exc)) from None
        if not isinstance(obj, dict):
            raise ProtocolError(codes.INVALID_MESSAGE, "message must be a JSON object")
        kind = obj.get("type")
        if kind is None:
            raise ProtocolError(codes.MISSING_FIELD, "message needs a 'type' field")
        message_type = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
        if message_type is None:
            raise ProtocolError(
                codes.UNKNOWN_MESSAGE_TYPE,
                f"unknown message type; expected one of {sorted(MESSAGE_TYPES)}",
            )
        del obj["type"]
        try:
            message = msgspec.convert(obj, message_type)
        except RecursionError:
            raise ProtocolError(codes.INVALID_MESSAGE, "message is nested too deeply") from None
        except msgspec.ValidationError as exc:
            text = str(exc)
            missing = _MISSING.search(text)
            if missing:
                raise ProtocolError(
                    codes.MISSING_FIELD, f"'{kind}' needs the field '{missing.group(1)}'"
                ) from None
            raise ProtocolError(codes.INVALID_FIELD, f"invalid '{kind}' message: {text}") from None
        self._check(message)
        if isinstance(message, StartMessage):
            # Whether history_text was there is the protocol's to say, never the client's;
            # it only matters with server_history (edge.session.turn_settings).
            sent = message.server_history and "history_text" in obj
            if sent != message.history_sent:
                message = msgspec.structs.replace(message, history_sent=sent)
        return message

    def _check(self, message: ClientMessage) -> None:
        match message:
            case StartMessage():
                _session_id(message.session_id)
                self._length(
                    "user_utterance", message.user_utterance, self._limits.max_utterance_chars
                )
                self._length("history_text", message.history_text, self._limits.max_history_chars)
                self._persona_fields(message)
            case SetPersonaMessage():
                if message.session_id is not None:
                    _session_id(message.session_id)
                self._persona_fields(message)
            case WarmPersonaMessage():
                self._persona_fields(message)
            case WarmHistoryMessage():
                self._length("history_text", message.history_text, self._limits.max_history_chars)
            case _:
                pass

    def _persona_fields(self, message: Any) -> None:
        gender = message.assistant_gender
        if gender is not None and normalize_gender(gender) is None:
            raise ProtocolError(
                codes.INVALID_FIELD,
                "assistant_gender must be one of woman, man (or female, male, f, m, w)",
            )
        style = message.persona_style
        if style is not None and style.strip() and style.strip() not in PERSONA_STYLES:
            raise ProtocolError(
                codes.INVALID_FIELD,
                f"persona_style must be one of {sorted(PERSONA_STYLES)}",
            )
        identity = message.user_identity
        if identity is not None and identity.strip() and identity.strip() not in USER_IDENTITIES:
            raise ProtocolError(
                codes.INVALID_FIELD,
                f"user_identity must be one of {sorted(USER_IDENTITIES)}",
            )
        persona_text = message.persona_text
        if isinstance(persona_text, str):
            self._length("persona_text", persona_text, self._limits.max_persona_chars)

    @staticmethod
    def _length(field: str, value: str, limit: int) -> None:
        if len(value) > limit:
            raise ProtocolError(
                codes.FIELD_TOO_LONG, f"{field} is {len(value)} characters; the limit is {limit}"
            )


def _json_error(text: str, exc: Exception) -> str:
    """What is wrong with a text that is not JSON, in words a client can act on."""
    lone = _LONE_SURROGATE.search(text)
    if lone is not None:
        escape = lone.group(0).lstrip("\\")[-5:]
        return (
            f"message is not valid JSON: \\{escape} is a lone UTF-16 surrogate escape, "
            "not a character (a surrogate must be escaped as a high-low pair)"
        )
    return f"message is not valid JSON: {exc}"


def _session_id(session_id: str) -> None:
    try:
        validate_session_id(session_id)
    except InvalidSessionId as exc:
        raise ProtocolError(codes.INVALID_SESSION_ID, str(exc)) from None
