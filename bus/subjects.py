"""The only place that builds NATS subject strings.

Inbound subjects (edge to actors) are keyed by session. Outbound ones (actors to
edge) name the edge that serves the connection, the session, and the actor that
sends: ``yap.edge.<edge_id>.session.<sid>.out.<actor_id>.<kind>``. So each edge
holds one wildcard subscription for all its sessions, per-session recording and
permissions still see the session, and a per-actor permission that lets an actor
publish only subjects with its own id makes the sender's id in the subject true.
Every id is checked before it ever becomes a subject token.
"""

from __future__ import annotations

import re
from typing import Final, Literal

__all__ = [
    "ALL_EDGE_STATS",
    "ALL_HEARTBEATS",
    "INBOX",
    "OUT_KINDS",
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
    "all_out",
    "all_tool_starts",
    "cancel",
    "chat_start",
    "chat_start_at",
    "chat_warm",
    "chat_warm_at",
    "edge_out",
    "edge_outbox",
    "edge_stats",
    "heartbeat",
    "inbox_prefix",
    "out_from",
    "parse_edge_out",
    "tool_start",
    "validate_id",
    "validate_session_id",
]

PREFIX: Final = "yap"
QUEUE_TOOL: Final = "yap-tool"
QUEUE_CHAT: Final = "yap-chat"
SESSION_ID_MAX_LEN: Final = 128
ALL_HEARTBEATS: Final = f"{PREFIX}.actor.*.*.heartbeat"
ALL_EDGE_STATS: Final = f"{PREFIX}.edge.*.stats"
# nats-py's default; each edge gets its own prefix under it (inbox_prefix()).
INBOX: Final = "_INBOX"

ActorKind = Literal["tool", "chat"]
OutKind = Literal["toolcall", "token", "done", "error", "warmed"]
OUT_KINDS: Final[frozenset[str]] = frozenset({"toolcall", "token", "done", "error", "warmed"})

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


def validate_id(identity: str) -> str:
    """An edge or actor id, checked like a session id: one safe subject token.

    Raises:
        InvalidSessionId: as :func:`validate_session_id`.
    """
    return validate_session_id(identity)


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
    return f"{chat_start(session_id)}.{validate_id(actor_id)}"


def chat_warm_at(session_id: str, actor_id: str) -> str:
    return f"{chat_warm(session_id)}.{validate_id(actor_id)}"


def all_chat_starts_at(actor_id: str) -> str:
    return f"{all_chat_starts()}.{validate_id(actor_id)}"


def all_chat_warms_at(actor_id: str) -> str:
    return f"{all_chat_warms()}.{validate_id(actor_id)}"


def cancel(session_id: str) -> str:
    return f"{_session(session_id)}.in.cancel"


def _edge(edge_id: str) -> str:
    return f"{PREFIX}.edge.{validate_id(edge_id)}"


def edge_out(edge_id: str, session_id: str, actor_id: str, kind: OutKind) -> str:
    """Where ``actor_id`` publishes one session's events for the edge serving it."""
    session = validate_session_id(session_id)
    return f"{_edge(edge_id)}.session.{session}.out.{validate_id(actor_id)}.{kind}"


def edge_outbox(edge_id: str) -> str:
    """The one subscription of an edge: every session's events, from every actor."""
    return f"{_edge(edge_id)}.session.*.out.>"


def all_out() -> str:
    """Every outbound event of every edge (recording, observers)."""
    return f"{PREFIX}.edge.*.session.*.out.>"


def out_from(actor_id: str) -> str:
    """Every outbound subject that names ``actor_id`` as the sender (its permission)."""
    return f"{PREFIX}.edge.*.session.*.out.{validate_id(actor_id)}.>"


def parse_edge_out(subject: str) -> tuple[str, str, str] | None:
    """``(session_id, actor_id, kind)`` of an outbound subject, or None if it is not one.

    Cheap (one split) because the edge calls it for every event; the tokens need no
    further check: a subscription only delivers subjects the server matched, and
    ids cannot hold a ``.``.
    """
    parts = subject.split(".")
    if len(parts) != 8 or parts[3] != "session" or parts[5] != "out" or parts[7] not in OUT_KINDS:
        return None
    return parts[4], parts[6], parts[7]


def inbox_prefix(identity: str) -> str:
    """A process's own request-reply inbox prefix, so its permission can name it alone."""
    return f"{INBOX}.{validate_id(identity)}"


def heartbeat(kind: ActorKind, actor_id: str) -> str:
    return f"{PREFIX}.actor.{kind}.{validate_id(actor_id)}.heartbeat"


def edge_stats(edge_id: str) -> str:
    return f"{_edge(edge_id)}.stats"


# Wildcard subscriptions for the actors, one per inbound kind.
def all_tool_starts() -> str:
    return f"{PREFIX}.session.*.in.tool.start"


def all_chat_starts() -> str:
    return f"{PREFIX}.session.*.in.chat.start"


def all_chat_warms() -> str:
    return f"{PREFIX}.session.*.in.chat.warm"


def all_cancels() -> str:
    return f"{PREFIX}.session.*.in.cancel"
