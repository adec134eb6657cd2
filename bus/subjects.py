"""The only place that builds NATS subject strings.

Inbound subjects (edge to actors) and outbound ones (actors to edge) are keyed by
session so that an edge listens to exactly the sessions it serves, and a session id
is checked before it ever becomes a subject token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    "RecordedSubject",
    "all_cancels",
    "all_chat_starts",
    "all_chat_starts_at",
    "all_chat_warms",
    "all_chat_warms_at",
    "all_clients",
    "all_imported",
    "all_tool_starts",
    "cancel",
    "chat_start",
    "chat_start_at",
    "chat_warm",
    "chat_warm_at",
    "client",
    "edge_stats",
    "heartbeat",
    "imported",
    "out",
    "parse_recorded",
    "recording_subjects",
    "recording_transform",
    "session_out",
    "session_recording",
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


# --- recording (issue 11) -----------------------------------------------------------
#
# The recording stream captures a session's inbound and outbound events plus the
# edge's own record of what the client sent. Everything below is built from the
# builders above, so a rename of those moves the stream's filters with it; nothing
# outside this module knows the shapes.

RecordedDirection = Literal["in", "out", "client"]
_IMPORT_PREFIX: Final = f"{PREFIX}.import"
_ANY: Final = "*"


def client(session_id: str) -> str:
    """The edge's record of one client message (or its answer) in a session."""
    return f"{_session(session_id)}.client"


# A valid id that the builders accept, swapped for a wildcard afterwards: filters
# are made by the same builders as the subjects they must match.
_PLACEHOLDER: Final = "RECORDING-PLACEHOLDER-SID"


def _wildcard_session(subject: str) -> str:
    return ".".join(_ANY if token == _PLACEHOLDER else token for token in subject.split("."))


def _common_prefix(*built: str) -> str:
    """The tokens all of ``built`` share, then ``>``: one filter for a family of subjects."""
    split = [subject.split(".") for subject in built]
    shared: list[str] = []
    for tokens in zip(*split, strict=False):
        if any(token != tokens[0] for token in tokens):
            break
        shared.append(tokens[0])
    return ".".join([*shared, ">"])


def _inbound_patterns(session_id: str, *, redact: bool) -> tuple[str, ...]:
    if redact:
        # Starts and warms carry utterance, history and persona text verbatim; the
        # edge records blanked copies on the client subject instead.
        return (cancel(session_id),)
    return (
        _common_prefix(
            tool_start(session_id),
            chat_start(session_id),
            chat_warm(session_id),
            cancel(session_id),
        ),
    )


def _outbound_patterns(session_id: str) -> tuple[str, ...]:
    return (session_out(session_id),)


def recording_subjects(*, redact: bool = False) -> tuple[str, ...]:
    """The recording stream's subject filters: every session's in, out and client.

    Heartbeats and edge stats are not sessions' events and match none of these.
    With ``redact`` the text-bearing inbound subjects are left out (see above).
    """
    patterns = (
        *_inbound_patterns(_PLACEHOLDER, redact=redact),
        *_outbound_patterns(_PLACEHOLDER),
        client(_PLACEHOLDER),
    )
    return (*(_wildcard_session(p) for p in patterns), all_imported())


def session_recording(session_id: str) -> tuple[str, ...]:
    """Consumer filters for everything recorded about one session."""
    return (
        *_inbound_patterns(session_id, redact=False),
        *_outbound_patterns(session_id),
        client(session_id),
    )


def all_clients() -> str:
    """Every session's client records (what ``python -m replay list`` reads)."""
    return _wildcard_session(client(_PLACEHOLDER))


def all_imported() -> str:
    """What a recording stream still listens to while recording is off: imports only."""
    return f"{_IMPORT_PREFIX}.>"


def imported(subject: str) -> str:
    """Where ``python -m replay import`` publishes a recorded ``subject``.

    Nothing but the recording stream listens under this prefix, so an imported
    start never reaches an actor; the stream stores it under ``subject`` again.
    """
    return f"{_IMPORT_PREFIX}.{subject}"


def recording_transform() -> tuple[str, str]:
    """The stream's subject transform (source, destination) that undoes :func:`imported`."""
    return f"{_IMPORT_PREFIX}.>", ">"


@dataclass(frozen=True, slots=True)
class RecordedSubject:
    """What a recorded subject says: whose, which direction, which kind.

    ``kind`` is the out kind (token, done...), the inbound kind (tool.start,
    chat.start, chat.warm, cancel) or ``client``; ``actor_id`` is the addressed or
    sending actor where the subject names one.
    """

    session_id: str
    direction: RecordedDirection
    kind: str
    actor_id: str | None = None


def parse_recorded(subject: str) -> RecordedSubject | None:
    """Read a recorded subject back; None for anything the recording does not hold."""
    tokens = subject.split(".")
    if len(tokens) < 4 or tokens[0] != PREFIX or tokens[1] != "session":
        return None
    session_id, direction, rest = tokens[2], tokens[3], tokens[4:]
    if not _SAFE_TOKEN.fullmatch(session_id):
        return None
    if direction == "client" and not rest:
        return RecordedSubject(session_id, "client", "client")
    if direction == "out" and len(rest) == 1:
        return RecordedSubject(session_id, "out", rest[0])
    if direction == "in" and rest:
        if rest == ["cancel"]:
            return RecordedSubject(session_id, "in", "cancel")
        if len(rest) in (2, 3) and rest[0] in ("tool", "chat"):
            actor = rest[2] if len(rest) == 3 else None
            return RecordedSubject(session_id, "in", f"{rest[0]}.{rest[1]}", actor)
    return None
