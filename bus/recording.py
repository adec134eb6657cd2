"""Session recording on JetStream: the stream, the edge's own records, redaction.

One stream, ``yap_recordings``, captures every session's inbound and outbound bus
events as they travel (its filters come from :func:`bus.subjects.recording_subjects`).
What the bus does not carry, the edge adds on the session's ``client`` subject as
:data:`Record` values: each client frame as received, errors that answered one, the
start and end of each turn, and a snapshot of the session's settings.

The stream is configured so that recording never changes what anyone receives:

* ``no_ack``: starts are NATS requests; a stream that acked them would answer the
  request before the actor's ``Accepted`` does.
* file storage in the nats-server's JetStream store dir, bounded by age and size,
  oldest discarded first.

Records are map-encoded msgpack (not ``array_like`` like the bus events): they are
few per turn, read by tools, and evolve by name.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, SubjectTransform
from nats.js.errors import NotFoundError

from bus import subjects
from bus.events import ActorKind, ChatStart, Persona, ToolStart, Warm
from configs.schema import Config, RecordingConfig

__all__ = [
    "FORMAT_VERSION",
    "REDACTED_FIELDS",
    "STREAM",
    "ClientFrame",
    "Deployment",
    "EdgeError",
    "LegStarted",
    "Record",
    "RecordCodec",
    "RecordDecodeError",
    "Redactor",
    "SessionSnapshot",
    "TurnEnded",
    "TurnStarted",
    "blank",
    "config_hash",
    "ensure_stream",
    "load_redactor",
    "redact_event",
    "redact_fields",
    "stream_config",
]

STREAM: Final = "yap_recordings"
# Version of the records' shape and of the export format built on them.
FORMAT_VERSION: Final = 1
# Message fields that hold user content: what a redaction hook is shown.
REDACTED_FIELDS: Final = ("user_utterance", "history_text", "persona_text")

TurnOutcome = Literal["running", "completed", "cancelled", "failed"]
# (field name, text) -> the text to store instead.
Redactor = Callable[[str, str], str]


class RecordDecodeError(ValueError):
    """A payload on a client subject that is not a record."""


# --- records ------------------------------------------------------------------------


class Record(msgspec.Struct, frozen=True, kw_only=True, tag=True, omit_defaults=True):
    """Base of the edge's records: which connection, and when (edge wall clock, ns)."""

    conn: str
    at_ns: int


class ClientFrame(Record, tag="frame"):
    """One WebSocket message from the client, as received (the API key never is)."""

    text: str = ""
    binary: bool = False
    # Bytes as received; ``text`` may be shorter (truncated) or blanked (redacted).
    size: int = 0
    truncated: bool = False
    redacted: bool = False


class EdgeError(Record, tag="error"):
    """An error frame the edge sent outside a turn: a rejected frame, a failed warm."""

    code: str


class SessionSnapshot(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The session's KV entry as the turn used it: what replay restores."""

    seed: int = 0
    now: str = ""
    assistant_gender: str | None = None
    persona_style: str = "wholesome"
    user_identity: str = "non-binary"
    persona_text: str | None = None
    # The server-kept history the session's first recorded turn started from.
    history: str = ""


class Deployment(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What served the session, for the export header."""

    edge_id: str = ""
    deploy: str = "both"
    concurrent: bool = False
    models: dict[str, str | None] = {}
    config_hash: str = ""
    redact: str = ""


class TurnStarted(Record, tag="turn"):
    """A start became a turn; ``settings`` on a connection's first turn and on change."""

    turn_id: str
    settings: SessionSnapshot | None = None
    deployment: Deployment | None = None


class TurnEnded(Record, tag="turn_end"):
    """How the turn ended, as the client was told (completed, cancelled, failed)."""

    turn_id: str
    outcome: str
    error_code: str | None = None


class LegStarted(Record, tag="leg"):
    """A blanked copy of a start the edge sent, recorded only when redacting.

    The stream then leaves the start subjects out (they carry the text); this keeps
    the leg's timing, ids and text lengths. ``event`` is the bus event's msgpack.
    """

    kind: ActorKind
    event: bytes


Records = ClientFrame | EdgeError | TurnStarted | TurnEnded | LegStarted


class RecordCodec:
    """One encoder and decoder for records, per process."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Records)

    def encode(self, record: Record) -> bytes:
        return self._encoder.encode(record)

    def decode(self, data: bytes) -> Records:
        """Raises: RecordDecodeError: the payload is no record."""
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise RecordDecodeError(str(exc)) from exc


# --- redaction ----------------------------------------------------------------------


def blank(field: str, text: str) -> str:
    """The built-in hook: as many ``_`` as the text has characters."""
    return "_" * len(text)


def load_redactor(spec: str) -> Redactor | None:
    """The hook ``recording.redact`` names: "" none, "blank", or "module:function".

    Raises:
        ValueError: the spec names nothing importable or callable.
    """
    if not spec:
        return None
    if spec == "blank":
        return blank
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"recording.redact must be '', 'blank' or 'module:function', got {spec!r}")
    try:
        hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"recording.redact {spec!r}: {exc}") from exc
    if not callable(hook):
        raise ValueError(f"recording.redact {spec!r} is not callable")
    return hook  # type: ignore[no-any-return]


def redact_fields(obj: Mapping[str, Any], redactor: Redactor) -> dict[str, Any]:
    """A client message (a JSON object) with its user-content fields passed through the hook."""
    out = dict(obj)
    for field in REDACTED_FIELDS:
        value = out.get(field)
        if isinstance(value, str):
            out[field] = redactor(field, value)
    return out


def redact_event(event: ToolStart | ChatStart | Warm, redactor: Redactor) -> Any:
    """A start or warm with utterance, history and persona text passed through the hook."""
    changes: dict[str, Any] = {"history_text": redactor("history_text", event.history_text)}
    if not isinstance(event, Warm):
        changes["user_utterance"] = redactor("user_utterance", event.user_utterance)
    if not isinstance(event, ToolStart):
        changes["persona"] = _redact_persona(event.persona, redactor)
    return msgspec.structs.replace(event, **changes)


def _redact_persona(persona: Persona, redactor: Redactor) -> Persona:
    if persona.persona_text is None:
        return persona
    return msgspec.structs.replace(
        persona, persona_text=redactor("persona_text", persona.persona_text)
    )


# --- deployment ---------------------------------------------------------------------


def config_hash(config: Config) -> str:
    """A short hash of the effective config, secrets left out, to tell deployments apart."""
    plain = msgspec.to_builtins(config)
    plain["edge"].pop("api_key", None)
    for key in ("url", "user", "password"):
        plain["bus"].pop(key, None)
    return hashlib.sha256(msgspec.json.encode(plain, order="sorted")).hexdigest()[:12]


# --- the stream ---------------------------------------------------------------------


def stream_config(config: RecordingConfig, *, enabled: bool = True) -> StreamConfig:
    """The recording stream's configuration; ``enabled=False`` takes imports only."""
    source, destination = subjects.recording_transform()
    listened = (
        list(subjects.recording_subjects(redact=bool(config.redact)))
        if enabled
        else [subjects.all_imported()]
    )
    return StreamConfig(
        name=STREAM,
        description="yap-bus session recordings (python -m replay)",
        subjects=listened,
        storage=StorageType.FILE,
        max_age=config.max_age_s,
        max_bytes=config.max_bytes,
        discard=DiscardPolicy.OLD,
        no_ack=True,
        # Imports arrive under a prefix no actor listens to and are stored under
        # the subject they were recorded on.
        subject_transform=SubjectTransform(src=source, dest=destination),
        metadata={"yap_recording_format": str(FORMAT_VERSION)},
    )


def _differs(have: StreamConfig, want: StreamConfig) -> bool:
    def transform(config: StreamConfig) -> tuple[str, str] | None:
        t = config.subject_transform
        return (t.src or "", t.dest or "") if t is not None else None

    return (
        sorted(have.subjects or []) != sorted(want.subjects or [])
        or have.no_ack != want.no_ack
        or have.discard != want.discard
        or abs((have.max_age or 0) - (want.max_age or 0)) > 1e-3
        or have.max_bytes != want.max_bytes
        or transform(have) != transform(want)
    )


async def ensure_stream(
    js: JetStreamContext, config: RecordingConfig, log: logging.Logger | logging.LoggerAdapter[Any]
) -> bool:
    """Create or update the stream to match ``config``; True when it records.

    With recording off an existing stream is switched to listen to imports only, so
    "off" stops capture at once even where an earlier run left the stream; what it
    holds stays readable until its age limit removes it. Never raises: recording
    is not worth failing an edge for.
    """
    want = stream_config(config, enabled=config.enabled)
    try:
        try:
            info = await js.stream_info(STREAM)
        except NotFoundError:
            if not config.enabled:
                return False
            await js.add_stream(want)
            log.info("recording sessions to JetStream stream %s", STREAM)
            return True
        if _differs(info.config, want):
            await js.update_stream(want)
            log.info(
                "recording stream %s %s",
                STREAM,
                "updated" if config.enabled else "paused (recording is off)",
            )
        return config.enabled
    except Exception as exc:
        log.warning("recording stream %s not set up: %r", STREAM, exc)
        return False
