"""What clients send, one Struct per message ``type``.

Unknown fields are ignored (clients written for the original server send extras);
types are checked when converting, so nothing is re-checked after. New fields go
last, with defaults, so that a message of an older client converts unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import msgspec

__all__ = [
    "MESSAGE_TYPES",
    "CancelMessage",
    "ClientMessage",
    "EndMessage",
    "PingMessage",
    "SetPersonaMessage",
    "StartMessage",
    "WarmHistoryMessage",
    "WarmPersonaMessage",
]

_UNSET = msgspec.UNSET


class StartMessage(msgspec.Struct, kw_only=True, frozen=True):
    session_id: str
    user_utterance: str
    history_text: str = ""
    assistant_gender: str | None = None
    persona_style: str | None = None
    user_identity: str | None = None
    # UNSET keeps the session's override; null or "" clears it.
    persona_text: str | msgspec.UnsetType | None = _UNSET
    # The session's stored history is the turn's history (edge.session), and the
    # exchange is added to it when the turn ends; an old client sends neither.
    server_history: bool = False
    # Set by ClientProtocol.parse, whatever the client sent: whether the start carried
    # a history_text at all. With server_history even "" replaces the stored history,
    # so "absent" and "empty" differ, which a str field alone cannot tell apart.
    history_sent: bool = False


class CancelMessage(msgspec.Struct, kw_only=True, frozen=True):
    pass


class WarmPersonaMessage(msgspec.Struct, kw_only=True, frozen=True):
    persona_text: str | msgspec.UnsetType | None = _UNSET
    persona_style: str | None = None
    assistant_gender: str | None = None
    user_identity: str | None = None


class WarmHistoryMessage(msgspec.Struct, kw_only=True, frozen=True):
    history_text: str = ""


class SetPersonaMessage(msgspec.Struct, kw_only=True, frozen=True):
    session_id: str | None = None
    assistant_gender: str | None = None
    persona_style: str | None = None
    user_identity: str | None = None
    persona_text: str | msgspec.UnsetType | None = _UNSET


class PingMessage(msgspec.Struct, kw_only=True, frozen=True):
    pass


class EndMessage(msgspec.Struct, kw_only=True, frozen=True):
    pass


ClientMessage = (
    StartMessage
    | CancelMessage
    | WarmPersonaMessage
    | WarmHistoryMessage
    | SetPersonaMessage
    | PingMessage
    | EndMessage
)

MESSAGE_TYPES: Final[Mapping[str, type[ClientMessage]]] = MappingProxyType(
    {
        "start": StartMessage,
        "cancel": CancelMessage,
        "warm_persona": WarmPersonaMessage,
        "warm_history": WarmHistoryMessage,
        "set_persona": SetPersonaMessage,
        "ping": PingMessage,
        "end": EndMessage,
    }
)
