"""The only place that builds NATS subject strings.

Inbound subjects (edge to actors) and outbound ones (actors to edge) are keyed by
session so that an edge listens to exactly the sessions it serves, and a session id
is checked before it ever becomes a subject token.
"""

from __future__ import annotations

import re
from typing import Final, Literal

__all__ = [
    "ALL_EDGE_STATS",
    "ALL_HEARTBEATS",
    "PREFIX",
    "QUEUE_CHAT",
    "QUEUE_TOOL",
    "SESSION_ID_MAX_LEN",
    "ActorKind",
    "InvalidSessionId",
    "OutKind",
    "all_cancels",
    "all_chat_starts",
    "all_chat_starts_at",
    "all_chat_warms",
    "all_chat_warms_at",
    "all_tool_starts",
    "cancel",
    "chat_start",
    "chat_start_at",
    "chat_warm",
    "chat_warm_at",
    "edge_stats",
    "heartbeat",
    "out",
    "session_out",
    "tool_start",
    "validate_session_id",
]

PREFIX: Final = "yap"
QUEUE_TOOL: Final = "yap-tool"
QUEUE_CHAT: Final = "yap-chat"
SESSION_ID_MAX_LEN: Final = 128
ALL_HEARTBEATS: Final = f"{PREFIX}.actor.*.*.heartbeat"
ALL_EDGE_STATS: Final = f"{PREFIX}.edge.*.stats"

ActorKind = Literal["tool", "chat"]
OutKind = Literal["toolcall", "token", "done", "error", "warmed"]

_SAFE_TOKEN = re.compile(rf"[A-Za-z0-9_-]{{1,{SESSION_ID_MAX_LEN}}}")


class InvalidSessionId(ValueError):
    """A session id that is not safe to use as a subject token."""


def validate_session_id(session_id: str) -> str:
    """Return ``session_id`` unchanged if it is a safe subject token.

    Raises:
        InvalidSessionId: if it is empty, longer than 128 characters, or holds
            anything but ``[A-Za-z0-9_-]`` (so no ``.``, ``*``, ``>`` or spaces).
    """
    if not _SAFE_TOKEN.fullmatch(session_id):
        raise InvalidSessionId(
            f"session_id must be 1-{SESSION_ID_MAX_LEN} characters of A-Z, a-z, 0-9, '_' or '-'"
        )
    return session_id


def _session(session_id: str) -> str:
    return f"{PREFIX}.session.{validate_session_id(session_id)}"


def tool_start(session_id: str) -> str:
    return f"{_session(session_id)}.in.tool.start"


def chat_start(session_id: str) -> str:
    return f"{_session(session_id)}.in.chat.start"


def chat_warm(session_id: str) -> str:
    return f"{_session(session_id)}.in.chat.warm"


# Session affinity: the same chat actor serves a session's turns while it lives, so
# its engine's prefix cache still holds the session's persona and history.
def chat_start_at(session_id: str, actor_id: str) -> str:
    return f"{chat_start(session_id)}.{validate_session_id(actor_id)}"


def chat_warm_at(session_id: str, actor_id: str) -> str:
    return f"{chat_warm(session_id)}.{validate_session_id(actor_id)}"


def all_chat_starts_at(actor_id: str) -> str:
    return f"{all_chat_starts()}.{validate_session_id(actor_id)}"


def all_chat_warms_at(actor_id: str) -> str:
    return f"{all_chat_warms()}.{validate_session_id(actor_id)}"


def cancel(session_id: str) -> str:
    return f"{_session(session_id)}.in.cancel"


def out(session_id: str, kind: OutKind) -> str:
    return f"{_session(session_id)}.out.{kind}"


def session_out(session_id: str) -> str:
    """Everything the actors send about one session (a subscription subject)."""
    return f"{_session(session_id)}.out.>"


def heartbeat(kind: ActorKind, actor_id: str) -> str:
    return f"{PREFIX}.actor.{kind}.{validate_session_id(actor_id)}.heartbeat"


def edge_stats(edge_id: str) -> str:
    return f"{PREFIX}.edge.{validate_session_id(edge_id)}.stats"


# Wildcard subscriptions for the actors, one per inbound kind.
def all_tool_starts() -> str:
    return f"{PREFIX}.session.*.in.tool.start"


def all_chat_starts() -> str:
    return f"{PREFIX}.session.*.in.chat.start"


def all_chat_warms() -> str:
    return f"{PREFIX}.session.*.in.chat.warm"


def all_cancels() -> str:
    return f"{PREFIX}.session.*.in.cancel"
