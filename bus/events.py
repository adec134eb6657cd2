"""Every message on the bus, as one tagged msgspec Struct per kind.

The union aliases are the contract: an edge decodes ``OutboundEvent``, an actor
decodes ``InboundEvent``. All structs are ``array_like`` because msgspec cannot mix
array-like and map-like structs in one union, and the token stream is hot enough
to want the compact form. Schemas evolve only by appending fields with defaults:
an older reader ignores extra trailing items, a newer one fills missing ones.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

__all__ = [
    "LEG_STAGES",
    "Accepted",
    "ActorKind",
    "Cancel",
    "ChatStart",
    "Done",
    "DoneReason",
    "EdgeStats",
    "Error",
    "Event",
    "Heartbeat",
    "InboundEvent",
    "LegTiming",
    "OutboundEvent",
    "Persona",
    "Rejected",
    "Reply",
    "Token",
    "ToolCall",
    "ToolCallSpec",
    "ToolStart",
    "Warm",
    "Warmed",
    "request_id",
]

ActorKind = Literal["tool", "chat"]
DoneReason = Literal["stop", "length", "cancelled", "error"]


class Event(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Base of every per-turn event: which session, which turn.

    Not ``kw_only``: msgspec puts keyword-only fields last in the array, and the ids
    must stay first so that new fields can be appended at the end.
    """

    session_id: str
    turn_id: str


class Persona(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A session's persona settings; ``persona_text`` overrides the composed persona."""

    assistant_gender: Literal["woman", "man"] = "woman"
    persona_style: str = "wholesome"
    user_identity: Literal["woman", "man", "non-binary"] = "non-binary"
    persona_text: str | None = None
    now: str = ""


# --- edge to actors -------------------------------------------------------------


class ToolStart(Event, tag="tool_start"):
    user_utterance: str
    history_text: str = ""
    # The edge serving the connection: the leg's events go to its subjects.
    edge_id: str = ""


class ChatStart(Event, tag="chat_start"):
    user_utterance: str
    persona: Persona
    history_text: str = ""
    seed: int | None = None
    edge_id: str = ""


class Warm(Event, tag="warm"):
    """Prime the chat engine's prefix cache; ``turn_id`` names this warm request."""

    segment: Literal["persona", "history"]
    persona: Persona
    history_text: str = ""
    edge_id: str = ""


class Cancel(Event, tag="cancel"):
    reason: str = "cancel"


InboundEvent = ToolStart | ChatStart | Warm | Cancel


# --- replies to a start (NATS request/reply) ------------------------------------


class Accepted(Event, tag="accepted"):
    actor_id: str
    kind: ActorKind
    # The accepting process's start: a heartbeat with another instance means the
    # actor restarted and the legs this one accepted are gone.
    instance: str = ""


class Rejected(Event, tag="rejected"):
    actor_id: str
    code: str
    message: str


# --- actors to edge -------------------------------------------------------------


class ToolCallSpec(msgspec.Struct, frozen=True, array_like=True):
    name: str
    arguments: dict[str, object] = {}


class ToolCall(Event, tag="toolcall"):
    seq: int
    status: Literal["yes", "no"]
    raw: str
    calls: tuple[ToolCallSpec, ...] = ()


class Token(Event, tag="token", gc=False):
    seq: int
    text: str


class LegTiming(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Where one leg's wait for its first event went, stamped in the actor's process.

    ``time.monotonic()`` seconds: comparable between processes of one Linux host (the
    engine core's stamps included), not between hosts. 0.0 where the leg never got
    there (cancelled first, say) or the engine keeps no stamps.
    """

    received: float = 0.0  # the start reached the actor's handler
    submitted: float = 0.0  # its prompt went to the engine
    queued: float = 0.0  # the engine took the request in
    scheduled: float = 0.0  # an engine step first ran it
    first_token: float = 0.0  # the engine step that made its first token ended
    first_output: float = 0.0  # the actor read the engine's first output
    first_event: float = 0.0  # the leg's first toolcall or token was published

    def stages(self) -> dict[str, float]:
        """Seconds between consecutive stamps, by the stage they end (``LEG_STAGES``),
        and ``engine``, submitted to first output (the stages from ``intake`` to
        ``return``, for an engine that keeps no stamps too); a stage with either end
        unset is left out."""
        stamps = (
            self.received,
            self.submitted,
            self.queued,
            self.scheduled,
            self.first_token,
            self.first_output,
            self.first_event,
        )
        stages = {
            name: end - begin
            for name, begin, end in zip(LEG_STAGES, stamps, stamps[1:], strict=False)
            if begin and end
        }
        if self.submitted and self.first_output:
            stages["engine"] = self.first_output - self.submitted
        return stages


# What each stage of ``LegTiming.stages`` holds: prompt building; the engine's intake
# (input processing, the hop to its core); waiting for a step; the step(s) up to the
# first token; the hop back to the actor; the worker's first event (for the tool, the
# tokens its decision still needed).
LEG_STAGES: Final = ("prompt", "intake", "wait", "prefill", "return", "first_event")


class Done(Event, tag="done"):
    """The last event of one actor's part of a turn, whatever happened."""

    seq: int
    kind: ActorKind
    reason: DoneReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    timing: LegTiming | None = None


class Error(Event, tag="error"):
    seq: int
    kind: ActorKind
    code: str
    message: str


class Warmed(Event, tag="warmed"):
    segment: Literal["persona", "history"]
    bytes: int
    tokens: int = 0
    actor_id: str = ""  # whose cache now holds it: the session's next turns go there


OutboundEvent = ToolCall | Token | Done | Error | Warmed

# Answers to a start (Accepted, Rejected) or a warm (Warmed, Rejected) request.
Reply = Accepted | Rejected | Warmed


# --- liveness -------------------------------------------------------------------


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Sent by every actor every ``interval_s``; the edge declares it lost after a few misses."""

    actor_id: str
    kind: ActorKind
    interval_s: float
    running: int = 0
    ready: bool = True
    draining: bool = False
    instance: str = ""  # fresh for every process start of this actor id
    # Admission load: the turns the actor holds against its ``max_running`` (warms
    # count in ``running`` but never fill it). 0 for ``limit``: an older actor that
    # does not say, never taken as full.
    limit: int = 0
    turns: int = 0


class EdgeStats(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Sent by every edge each ``interval_s``, for ``just status`` and dashboards."""

    edge_id: str
    interval_s: float
    connections: int
    max_connections: int
    running_turns: int
    turns: dict[str, int] = {}
    # Over the most recent turns, in milliseconds; 0 when there were none.
    ttft_p50_ms: float = 0.0
    ttft_p95_ms: float = 0.0
    toolcall_p50_ms: float = 0.0


def request_id(kind: ActorKind, session_id: str, turn_id: str) -> str:
    """The engine request id of one actor's part of a turn: one cancel maps to one request."""
    return f"{kind}:{session_id}:{turn_id}"
