"""One recorded event in plain form, and the way to and from the stream.

A stream message is either a bus event (inbound or outbound, msgpack arrays) or an
edge record (:mod:`bus.recording`). Both become an :class:`Event`: a timestamp, a
direction, a kind and a JSON-ready payload, which is what ``show`` prints and what
``export`` writes. ``import`` turns an event back into the subject and bytes it was
recorded as, so a file and a stream hold the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Final, Literal

import msgspec

from bus import subjects
from bus.codec import BusDecodeError, Codec
from bus.events import (
    Cancel,
    ChatStart,
    Done,
    Error,
    Token,
    ToolCall,
    ToolStart,
    Warm,
    Warmed,
)
from bus.recording import (
    ClientFrame,
    Deployment,
    LegStarted,
    RecordCodec,
    RecordDecodeError,
    Records,
    SessionSnapshot,
)

__all__ = [
    "RECORDED_AT_HEADER",
    "Direction",
    "Event",
    "EventCodec",
    "EventError",
    "Session",
    "from_plain",
    "to_plain",
]

Direction = Literal["client", "edge", "in", "out"]
# Set by import: the time the event was first recorded, in ns since the epoch.
RECORDED_AT_HEADER: Final = "Yap-Recorded-Ns"

_IN_TYPES: Final[dict[str, type[msgspec.Struct]]] = {
    "tool.start": ToolStart,
    "chat.start": ChatStart,
    "chat.warm": Warm,
    "cancel": Cancel,
}
_OUT_TYPES: Final[dict[str, type[msgspec.Struct]]] = {
    "toolcall": ToolCall,
    "token": Token,
    "done": Done,
    "error": Error,
    "warmed": Warmed,
}
_RECORD_KINDS: Final = frozenset({"frame", "error", "turn", "turn_end"})


class EventError(ValueError):
    """An event that cannot be read or rebuilt; the message says why."""


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded event.

    ``direction`` is ``client`` (a frame the client sent), ``edge`` (the edge's own
    records: errors it answered with, turn start and end), ``in`` (edge to actors)
    or ``out`` (actors to edge). ``kind`` is the record's tag or the subject's kind.
    ``actor_id`` is the actor the subject names (the addressed one of a start with
    affinity, the sender of an outbound event), ``edge_id`` the edge an outbound
    event went to: what rebuilds the subject on import.
    """

    at_ns: int
    direction: Direction
    kind: str
    payload: dict[str, Any]
    actor_id: str | None = None
    edge_id: str | None = None

    @property
    def turn_id(self) -> str | None:
        value = self.payload.get("turn_id")
        return value if isinstance(value, str) else None

    @property
    def seq(self) -> int | None:
        value = self.payload.get("seq") if self.direction == "out" else None
        return value if isinstance(value, int) else None


@dataclass(frozen=True, slots=True)
class Session:
    """Everything recorded about one session, oldest first."""

    session_id: str
    events: tuple[Event, ...]
    # From the first turn's snapshot; None when no turn ever started.
    settings: SessionSnapshot | None = None
    deployment: Deployment | None = None

    @property
    def started_ns(self) -> int:
        return self.events[0].at_ns if self.events else 0

    @property
    def redacted(self) -> bool:
        return bool(self.deployment is not None and self.deployment.redact) or any(
            e.payload.get("redacted") for e in self.events if e.direction == "client"
        )

    @classmethod
    def of(cls, session_id: str, events: list[Event]) -> Session:
        """A session from its events, in time order, with its first snapshot."""
        ordered = tuple(sorted(events, key=lambda e: e.at_ns))
        settings: SessionSnapshot | None = None
        deployment: Deployment | None = None
        for event in ordered:
            if event.kind == "turn" and event.direction == "edge":
                if settings is None and event.payload.get("settings") is not None:
                    settings = msgspec.convert(event.payload["settings"], SessionSnapshot)
                if deployment is None and event.payload.get("deployment") is not None:
                    deployment = msgspec.convert(event.payload["deployment"], Deployment)
        return cls(session_id, ordered, settings, deployment)


# --- plain form of array-like structs -----------------------------------------------


def to_plain(value: Any) -> Any:
    """A struct as a dict of its fields (recursively): JSON-ready and readable."""
    if isinstance(value, msgspec.Struct):
        return {name: to_plain(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    return value


@cache
def _info(cls: type[msgspec.Struct]) -> msgspec.inspect.StructType:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return info


def _wire(kind: msgspec.inspect.Type, value: Any) -> Any:
    """``value`` (plain) in the shape msgspec decodes ``kind`` from."""
    match kind:
        case msgspec.inspect.StructType():
            if not isinstance(value, dict):
                raise EventError(f"expected an object for {kind.cls.__name__}, got {value!r}")
            return _struct_wire(kind, value)
        case msgspec.inspect.UnionType():
            if isinstance(value, dict):
                for member in kind.types:
                    if isinstance(member, msgspec.inspect.StructType):
                        return _struct_wire(member, value)
            return value
        case (
            msgspec.inspect.ListType()
            | msgspec.inspect.VarTupleType()
            | msgspec.inspect.SetType()
            | msgspec.inspect.FrozenSetType()
        ):
            if not isinstance(value, list):
                return value  # msgspec says what is wrong with it
            return [_wire(kind.item_type, item) for item in value]
        case _:
            return value


def _struct_wire(kind: msgspec.inspect.StructType, value: dict[str, Any]) -> Any:
    if not kind.array_like:
        return {name: _wire(f.type, value[name]) for f in kind.fields if (name := f.name) in value}
    items: list[Any] = [kind.tag] if kind.tag is not None else []
    for f in kind.fields:
        if f.name in value:
            items.append(_wire(f.type, value[f.name]))
        elif f.required:
            raise EventError(f"{kind.cls.__name__} needs the field '{f.name}'")
        else:
            default = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
            items.append(_wire(f.type, to_plain(default)))
    return items


def from_plain(cls: type[msgspec.Struct], value: dict[str, Any]) -> Any:
    """The struct ``cls`` from its plain form, validated as if decoded from the bus.

    Raises:
        EventError: a field is missing or of the wrong type.
    """
    try:
        return msgspec.convert(_struct_wire(_info(cls), value), cls)
    except msgspec.ValidationError as exc:
        raise EventError(f"invalid {cls.__name__}: {exc}") from None


# --- stream messages ----------------------------------------------------------------


class EventCodec:
    """Stream message <-> :class:`Event`; one per process."""

    def __init__(self) -> None:
        self._bus = Codec()
        self._records = RecordCodec()

    def decode(
        self, subject: str, data: bytes, stream_ns: int, headers: dict[str, str] | None = None
    ) -> tuple[str, Event] | None:
        """(session id, event) of one stream message; None for what is not a session's.

        Raises:
            EventError: the payload does not decode.
        """
        recorded = subjects.parse_recorded(subject)
        if recorded is None:
            return None
        at_ns = stream_ns
        if headers and RECORDED_AT_HEADER in headers:
            try:
                at_ns = int(headers[RECORDED_AT_HEADER])
            except ValueError:
                raise EventError(f"bad {RECORDED_AT_HEADER} header on {subject}") from None
        try:
            if recorded.direction == "client":
                return recorded.session_id, self._record_event(self._records.decode(data))
            if recorded.direction == "in":
                event: msgspec.Struct = self._bus.decode_inbound(data)
            else:
                event = self._bus.decode_outbound(data)
        except (BusDecodeError, RecordDecodeError) as exc:
            raise EventError(f"undecodable message on {subject}: {exc}") from None
        plain = to_plain(event)
        return recorded.session_id, Event(
            at_ns, recorded.direction, recorded.kind, plain, recorded.actor_id, recorded.edge_id
        )

    def _record_event(self, record: Records) -> Event:
        if isinstance(record, LegStarted):
            # A blanked start: shown and exported as the start it stands for.
            try:
                inner = self._bus.decode_inbound(record.event)
            except BusDecodeError as exc:
                raise EventError(f"undecodable leg record: {exc}") from None
            plain = {**to_plain(inner), "redacted": True, "conn": record.conn}
            return Event(record.at_ns, "in", f"{record.kind}.start", plain)
        plain = msgspec.to_builtins(record)
        kind = plain.pop("type")
        at_ns = plain.pop("at_ns")
        direction: Direction = "client" if isinstance(record, ClientFrame) else "edge"
        return Event(at_ns, direction, kind, plain)

    def encode(self, session_id: str, event: Event) -> tuple[str, bytes]:
        """The subject and payload ``event`` was recorded as (for import).

        Raises:
            EventError: the event is not one a recording holds, or is malformed.
        """
        payload = dict(event.payload)
        if event.direction in ("client", "edge"):
            if event.kind not in _RECORD_KINDS:
                raise EventError(f"unknown {event.direction} event kind {event.kind!r}")
            try:
                record = msgspec.convert(
                    {**payload, "type": event.kind, "at_ns": event.at_ns}, Records
                )
            except msgspec.ValidationError as exc:
                raise EventError(f"invalid {event.kind} record: {exc}") from None
            return subjects.client(session_id), self._records.encode(record)
        types = _IN_TYPES if event.direction == "in" else _OUT_TYPES
        cls = types.get(event.kind)
        if cls is None:
            raise EventError(f"unknown {event.direction} event kind {event.kind!r}")
        struct = from_plain(cls, payload)
        if getattr(struct, "session_id", session_id) != session_id:
            struct = msgspec.structs.replace(struct, session_id=session_id)
        try:
            subject = _subject(session_id, event)
        except subjects.InvalidSessionId as exc:  # an id in the file that is no subject token
            raise EventError(f"{event.direction} {event.kind} event: {exc}") from None
        return subject, self._bus.encode(struct)


def _subject(session_id: str, event: Event) -> str:
    """Raises: EventError: an outbound event that does not say whose it was;
    InvalidSessionId: an id that is no subject token."""
    actor = event.actor_id
    if event.direction == "out":
        if not actor or not event.edge_id:
            raise EventError(f"an outbound {event.kind} event needs its edge and actor ids")
        return subjects.edge_out(event.edge_id, session_id, actor, event.kind)  # type: ignore[arg-type]
    match event.kind:
        case "tool.start":
            return subjects.tool_start(session_id)
        case "chat.start":
            return (
                subjects.chat_start_at(session_id, actor)
                if actor
                else subjects.chat_start(session_id)
            )
        case "chat.warm":
            return (
                subjects.chat_warm_at(session_id, actor)
                if actor
                else subjects.chat_warm(session_id)
            )
        case _:
            return subjects.cancel(session_id)
