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
from dataclasses import dataclass
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
    "RecordedSubject",
    "all_cancels",
    "all_chat_starts",
    "all_chat_starts_at",
    "all_chat_warms",
    "all_chat_warms_at",
    "all_clients",
    "all_imported",
    "all_out",
    "all_tool_starts",
    "cancel",
    "chat_start",
    "chat_start_at",
    "chat_warm",
    "chat_warm_at",
    "client",
    "edge_out",
    "edge_outbox",
    "edge_stats",
    "heartbeat",
    "imported",
    "inbox_prefix",
    "out_from",
    "parse_edge_out",
    "parse_recorded",
    "recording_subjects",
    "recording_transform",
    "session_recording",
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


def all_out(kind: OutKind | None = None) -> str:
    """Every outbound event of every edge (recording, observers); with ``kind``, only
    events of that kind, from any actor (a benchmark's listener on ``done``)."""
    if kind is None:
        return f"{PREFIX}.edge.*.session.*.out.>"
    return f"{PREFIX}.edge.*.session.*.out.*.{kind}"


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


# --- recording (issue 11) -----------------------------------------------------------
#
# The recording stream captures a session's inbound and outbound events plus the
# edge's own record of what the client sent. Everything below is built from the
# builders above, so a rename of those moves the stream's filters with it; nothing
# outside this module knows the shapes.

RecordedDirection = Literal["in", "out", "client"]
_IMPORT_PREFIX: Final = f"{PREFIX}.import"
_ANY: Final = "*"
# Valid ids that the builders accept, swapped for wildcards afterwards: filters are
# made by the same builders as the subjects they must match. Two of them, so a
# session's filter can wildcard the edge and actor tokens and keep the session's.
_ANY_SESSION: Final = "RECORDING-PLACEHOLDER-SID"
_ANY_ID: Final = "RECORDING-PLACEHOLDER-ID"


def client(session_id: str) -> str:
    """The edge's record of one client message (or its answer) in a session."""
    return f"{_session(session_id)}.client"


def _wildcard(subject: str) -> str:
    placeholders = (_ANY_SESSION, _ANY_ID)
    return ".".join(_ANY if token in placeholders else token for token in subject.split("."))


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


def _session_out(session_id: str) -> str:
    """One session's outbound events, to whichever edges served it, from any actor."""
    built = (edge_out(_ANY_ID, session_id, _ANY_ID, kind) for kind in sorted(OUT_KINDS))
    return _wildcard(_common_prefix(*built))


def recording_subjects(*, redact: bool = False) -> tuple[str, ...]:
    """The recording stream's subject filters: every session's in, out and client.

    Heartbeats and edge stats are not sessions' events and match none of these.
    With ``redact`` the text-bearing inbound subjects are left out (see above).
    """
    inbound = (_wildcard(p) for p in _inbound_patterns(_ANY_SESSION, redact=redact))
    return (*inbound, all_out(), all_clients(), all_imported())


def session_recording(session_id: str) -> tuple[str, ...]:
    """Consumer filters for everything recorded about one session."""
    return (
        *_inbound_patterns(session_id, redact=False),
        _session_out(session_id),
        client(session_id),
    )


def all_clients() -> str:
    """Every session's client records (what ``python -m replay list`` reads)."""
    return _wildcard(client(_ANY_SESSION))


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
    chat.start, chat.warm, cancel) or ``client``; ``actor_id`` is the addressed
    actor (an inbound subject with affinity) or the sending one (outbound);
    ``edge_id`` is the edge an outbound event went to.
    """

    session_id: str
    direction: RecordedDirection
    kind: str
    actor_id: str | None = None
    edge_id: str | None = None


def parse_recorded(subject: str) -> RecordedSubject | None:
    """Read a recorded subject back; None for anything the recording does not hold."""
    tokens = subject.split(".")
    if (out := parse_edge_out(subject)) is not None:
        # Outside an edge's own subscription no server match vouches for the tokens
        # (an export file may hold anything): check them here.
        session_id, actor_id, kind = out
        edge_id = tokens[2]
        if tokens[:2] != [PREFIX, "edge"] or not all(
            _SAFE_TOKEN.fullmatch(token) for token in (edge_id, session_id, actor_id)
        ):
            return None
        return RecordedSubject(session_id, "out", kind, actor_id, edge_id)
    if len(tokens) < 4 or tokens[0] != PREFIX or tokens[1] != "session":
        return None
    session_id, direction, rest = tokens[2], tokens[3], tokens[4:]
    if not _SAFE_TOKEN.fullmatch(session_id):
        return None
    if direction == "client" and not rest:
        return RecordedSubject(session_id, "client", "client")
    if direction == "in" and rest:
        if rest == ["cancel"]:
            return RecordedSubject(session_id, "in", "cancel")
        if len(rest) in (2, 3) and rest[0] in ("tool", "chat"):
            actor = rest[2] if len(rest) == 3 else None
            if actor is not None and not _SAFE_TOKEN.fullmatch(actor):
                return None
            return RecordedSubject(session_id, "in", f"{rest[0]}.{rest[1]}", actor)
    return None
