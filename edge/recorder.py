"""The edge's part of session recording: what the bus does not see.

Actors' events and the edge's starts reach the recording stream by themselves (it
listens on their subjects). What only the edge knows goes to the session's
``client`` subject as records (:mod:`bus.recording`): each client frame as received,
the errors that answered one, when each turn started (with a snapshot of the
session's settings) and how it ended.

Call sites are one synchronous line each: a record is stamped at once and put on a
bounded queue; one task publishes the queue in order. Recording therefore never
waits on the bus and never slows a turn; when the queue is full (the bus is
gone), records are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NatsClient

from bus import subjects
from bus.codec import Codec
from bus.events import ActorKind, ChatStart, ToolStart
from bus.recording import (
    ClientFrame,
    Deployment,
    EdgeError,
    LegStarted,
    Record,
    RecordCodec,
    Redactor,
    SessionSnapshot,
    TurnEnded,
    TurnStarted,
    config_hash,
    ensure_stream,
    load_redactor,
    redact_event,
    redact_fields,
)
from configs.schema import Config
from edge.sessions import SessionSettings

__all__ = ["ConnectionRecorder", "Recorder"]

# Records waiting for the publisher; past this they are dropped (the bus is gone).
QUEUE_LIMIT: Final = 4096
# Frames a connection sends before it names a session (bad frames, pings): kept
# and filed under the first session it names.
EARLY_FRAMES: Final = 16
_API_KEY_MARK: Final = "[api_key]"


class _Peek(msgspec.Struct):
    """The two fields that say which session a client message concerns."""

    type: Any = None
    session_id: Any = None


class Recorder:
    """Edge-wide recording state: the stream setup, the queue and its publisher.

    ``start`` sets the stream up (or pauses it when recording is off) and starts
    the publisher; ``close`` publishes what is still queued and stops it.

    Args:
        config: the deployment; ``config.recording`` says whether and how.
        nc: the edge's bus connection (None: never records).
        edge_id: written into each session's deployment snapshot.
    """

    def __init__(
        self,
        config: Config,
        nc: NatsClient | None,
        edge_id: str,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._config = config
        self._nc = nc
        self._log = log
        self._codec = RecordCodec()
        self._bus_codec = Codec()
        self._redactor: Redactor | None = load_redactor(config.recording.redact)
        self._api_key = config.edge.api_key
        self._queue: deque[tuple[str, bytes]] = deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.enabled = False
        self.dropped = 0
        models = config.models
        self.deployment = Deployment(
            edge_id=edge_id,
            deploy=models.deploy,
            concurrent=models.concurrent_model_call,
            models={
                "chat": config.chat.model if models.chat else None,
                "tool": config.tool.model if models.tool else None,
            },
            config_hash=config_hash(config),
            redact=config.recording.redact,
        )

    @classmethod
    def off(cls) -> Recorder:
        """A recorder that records nothing (an edge state built without one)."""
        return cls(Config(), None, "", logging.getLogger("yap.recorder"))

    async def start(self) -> None:
        if self._nc is not None:
            js = self._nc.jetstream(timeout=2.0)
            self.enabled = await ensure_stream(js, self._config.recording, self._log)
        if self.enabled:
            # Owned: stopped and awaited in close().
            self._task = asyncio.create_task(self._publish_loop())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self._publish_pending()  # what was queued before the stop still goes out

    def connection(self) -> ConnectionRecorder:
        """The recorder of one new WebSocket connection."""
        return ConnectionRecorder(self)

    def leg_started(self, kind: ActorKind, event: ToolStart | ChatStart) -> None:
        """A start is going to an actor; recorded here only when the stream cannot see it.

        Called by the leg client, which builds the start and knows no connection:
        the record names none (``conn`` is empty), and its turn id ties it to the
        turn, whose records name the connection. The session's earlier records are
        already filed by then (its start frame came first).
        """
        redactor = self._redactor
        if not self.enabled or redactor is None:
            return  # unredacted, the stream captures the start itself
        record = LegStarted(
            conn="",
            at_ns=time.time_ns(),
            kind=kind,
            event=self._bus_codec.encode(redact_event(event, redactor)),
        )
        self.put(event.session_id, record)

    # --- used by ConnectionRecorder ---------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` without the API key, wherever a client put it."""
        return text.replace(self._api_key, _API_KEY_MARK) if self._api_key in text else text

    @property
    def redactor(self) -> Redactor | None:
        return self._redactor

    def put(self, session_id: str, record: Record) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self.dropped += 1
            if self.dropped in (1, 100, 10_000):
                self._log.warning("recording queue full: %d record(s) dropped", self.dropped)
            return
        self._queue.append((subjects.client(session_id), self._codec.encode(record)))
        self._ready.set()

    # --- the publisher ----------------------------------------------------------

    async def _publish_loop(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self._publish_pending()

    async def _publish_pending(self) -> None:
        nc = self._nc
        assert nc is not None
        while self._queue:
            subject, payload = self._queue.popleft()
            try:
                await nc.publish(subject, payload)
            except Exception as exc:  # a record is not worth a failure anywhere else
                self.dropped += 1
                self._log.debug("record not published: %r", exc)


class ConnectionRecorder:
    """Records one connection's client frames and turns; every method is O(1) and sync."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._on = recorder.enabled
        self._conn = uuid.uuid4().hex[:8]
        self._peek = msgspec.json.Decoder(_Peek)
        self._json = msgspec.json.Decoder()
        self._encoder = msgspec.json.Encoder()
        self._session: str | None = None  # the session the connection serves
        self._last: str | None = None  # the session of the last frame: errors answer it
        self._early: deque[Record] = deque(maxlen=EARLY_FRAMES)
        self._snapshots: dict[str, SessionSnapshot] = {}

    def frame(self, data: str | bytes) -> None:
        """A WebSocket message just arrived (before any check)."""
        if not self._on:
            return
        at_ns = time.time_ns()
        if isinstance(data, bytes):
            record = ClientFrame(conn=self._conn, at_ns=at_ns, binary=True, size=len(data))
            self._file(record, self._session)
            return
        text, redacted = self._stored_text(data)
        record = ClientFrame(
            conn=self._conn, at_ns=at_ns, text=text, size=len(data.encode()), redacted=redacted
        )
        self._file(record, self._named_session(data))

    def error(self, code: str) -> None:
        """The edge answered with an error frame outside a turn."""
        if self._on:
            self._file(EdgeError(conn=self._conn, at_ns=time.time_ns(), code=code), self._last)

    def turn_started(self, session_id: str, turn_id: str, settings: SessionSettings) -> None:
        """A start became a turn (after its ``ack`` was queued)."""
        if not self._on:
            return
        self._session = session_id
        snapshot = _snapshot(settings, self._recorder.redactor)
        # A server-kept history grows every turn; only the other settings changing
        # makes a new snapshot (replay restores the first and replays the rest).
        key = msgspec.structs.replace(snapshot, history="")
        fresh = self._snapshots.get(session_id) != key
        self._snapshots[session_id] = key
        record = TurnStarted(
            conn=self._conn,
            at_ns=time.time_ns(),
            turn_id=turn_id,
            settings=snapshot if fresh else None,
            deployment=self._recorder.deployment if fresh else None,
        )
        self._file(record, session_id)

    def turn_ended(self, session_id: str, turn_id: str, outcome: str, code: str | None) -> None:
        """The turn is over, however it ended."""
        if self._on:
            record = TurnEnded(
                conn=self._conn,
                at_ns=time.time_ns(),
                turn_id=turn_id,
                outcome=outcome,
                error_code=code,
            )
            self._file(record, session_id)

    # --- internals ----------------------------------------------------------------

    def _file(self, record: Record, session_id: str | None) -> None:
        if session_id is None:
            self._early.append(record)
            return
        self._last = session_id
        while self._early:
            self._recorder.put(session_id, self._early.popleft())
        self._recorder.put(session_id, record)

    def _named_session(self, text: str) -> str | None:
        """The session a frame concerns: the one a start or set_persona names, else ours."""
        try:
            peek = self._peek.decode(text)
        except (msgspec.DecodeError, RecursionError):
            return self._session
        named = peek.session_id
        if peek.type in ("start", "set_persona") and isinstance(named, str):
            try:
                subjects.validate_session_id(named)
            except subjects.InvalidSessionId:
                return self._session
            if self._session is None and peek.type == "set_persona":
                self._session = named  # the connection adopts it the same way
            return named
        return self._session

    def _stored_text(self, text: str) -> tuple[str, bool]:
        text = self._recorder.scrub(text)
        redactor = self._recorder.redactor
        if redactor is None:
            return text, False
        try:
            obj = self._json.decode(text)
        except (msgspec.DecodeError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            return self._encoder.encode(redact_fields(obj, redactor)).decode(), True
        return redactor("frame", text), True  # not a message: nothing in it is safe to keep


def _snapshot(settings: SessionSettings, redactor: Redactor | None) -> SessionSnapshot:
    persona_text = settings.persona_text
    history = settings.history
    if redactor is not None:
        if persona_text is not None:
            persona_text = redactor("persona_text", persona_text)
        if history:
            history = redactor("history_text", history)
    return SessionSnapshot(
        seed=settings.seed,
        now=settings.now,
        assistant_gender=settings.assistant_gender,
        persona_style=settings.persona_style,
        user_identity=settings.user_identity,
        persona_text=persona_text,
        history=history,
    )
