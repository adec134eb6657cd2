"""Reading the recording stream, and writing imported sessions into one.

Reads go through ordered consumers (ephemeral, no acks, gone when the reader is),
so no command ever changes what the stream holds. Only ``import`` writes, under
the import prefix: the stream stores those messages under the subjects they were
recorded on, and no actor ever sees them.
"""

from __future__ import annotations

import asyncio
import datetime
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Final

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bus import subjects
from bus.permissions import REPLAY
from bus.recording import STREAM, stream_config
from configs.schema import RecordingConfig
from replay.errors import NoRecordingStream, ReplayError, SessionNotFound, TargetUnreachable
from replay.events import RECORDED_AT_HEADER, Event, EventCodec, Session

__all__ = ["BusTarget", "RecordingStore", "connect"]

# Longest wait for the next message of a read the consumer said is pending.
_NEXT_TIMEOUT_S: Final = 10.0
_CONNECT_TIMEOUT_S: Final = 2.0
# How long an apparently empty read still waits for a message being stored.
_EMPTY_TIMEOUT_S: Final = 0.25


class BusTarget:
    """Where and as whom to reach a nats-server."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None) -> None:
        self.url = url
        self.user = user
        self.password = password


async def connect(target: BusTarget) -> NatsClient:
    """A connection that fails at once (no retry loop) when the server is not there.

    Raises:
        TargetUnreachable: nothing answers at the URL, or the credentials are refused.
    """

    async def quiet(exc: Exception) -> None:
        pass  # the one-line error below says it; nats-py would print each attempt

    try:
        async with asyncio.timeout(_CONNECT_TIMEOUT_S * 3):
            return await nats.connect(
                target.url,
                user=target.user,
                password=target.password,
                connect_timeout=_CONNECT_TIMEOUT_S,
                allow_reconnect=False,
                # nats-py retries a refused first connect forever at 0; once is plenty.
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=quiet,
                # The replay user's replies come to an inbox prefix of its own: its
                # bus permission names that prefix alone.
                inbox_prefix=subjects.inbox_prefix(REPLAY),
            )
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise TargetUnreachable(f"cannot reach nats-server at {target.url}: {reason}") from None


class RecordingStore:
    """The recording stream on one nats-server connection."""

    def __init__(self, nc: NatsClient, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        # A JetStream API call the server refuses (permissions) gets no answer: this
        # is how long one waits for it.
        self._js: JetStreamContext = nc.jetstream(timeout=timeout_s)
        self._codec = EventCodec()

    async def check(self) -> None:
        """Raises: NoRecordingStream: the server has no recording stream."""
        try:
            await self._js.stream_info(STREAM)
        except NotFoundError:
            raise NoRecordingStream(
                f"no recording stream {STREAM} on this server (is [recording] enabled?)"
            ) from None
        except Exception as exc:
            raise ReplayError(f"cannot read the recording stream: {exc!r}") from None

    async def messages(
        self, filters: Sequence[str], since: datetime.datetime | None = None
    ) -> AsyncIterator[Msg]:
        """Every stored message on ``filters`` (from ``since``), oldest first, then stop."""
        config = ConsumerConfig(
            filter_subjects=list(filters),
            deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
            opt_start_time=since.isoformat() if since else None,  # type: ignore[arg-type]
        )
        try:
            sub = await self._js.subscribe(
                filters[0], stream=STREAM, ordered_consumer=True, config=config
            )
        except Exception as exc:  # refused (permissions), gone, timed out: one line
            raise ReplayError(f"cannot read the recording stream: {exc!r}") from None
        try:
            info = await sub.consumer_info()
            # The stream stores what it receives a moment later: a consumer made just
            # then can count nothing yet and still get a message.
            timeout_s = _NEXT_TIMEOUT_S if info.num_pending else _EMPTY_TIMEOUT_S
            while True:
                try:
                    msg = await sub.next_msg(timeout=timeout_s)
                except nats.errors.TimeoutError:
                    if info.num_pending:
                        raise ReplayError("the recording stream stopped answering") from None
                    return
                yield msg
                if msg.metadata.num_pending == 0:
                    return
                timeout_s = _NEXT_TIMEOUT_S
        finally:
            await sub.unsubscribe()

    async def sessions(
        self, since: datetime.datetime | None = None, *, records_only: bool = False
    ) -> list[Session]:
        """Every recorded session (``records_only``: the edge's records, enough for list)."""
        filters = (subjects.all_clients(),) if records_only else _all_session_filters()
        grouped: dict[str, list[Event]] = defaultdict(list)
        async for msg in self.messages(filters, since):
            decoded = self._decode(msg)
            if decoded is not None:
                grouped[decoded[0]].append(decoded[1])
        return sorted(
            (Session.of(session_id, events) for session_id, events in grouped.items()),
            key=lambda s: s.started_ns,
        )

    async def session(self, session_id: str) -> Session:
        """Raises: SessionNotFound: nothing is recorded for ``session_id``."""
        try:
            subjects.validate_session_id(session_id)
        except subjects.InvalidSessionId as exc:
            raise SessionNotFound(f"no such session {session_id!r}: {exc}") from None
        events: list[Event] = []
        async for msg in self.messages(subjects.session_recording(session_id)):
            decoded = self._decode(msg)
            if decoded is not None and decoded[0] == session_id:
                events.append(decoded[1])
        if not events:
            raise SessionNotFound(f"no recorded session {session_id!r}")
        return Session.of(session_id, events)

    def _decode(self, msg: Msg) -> tuple[str, Event] | None:
        stamp = msg.metadata.timestamp
        stream_ns = int(stamp.timestamp() * 1_000_000) * 1000
        return self._codec.decode(msg.subject, msg.data, stream_ns, dict(msg.headers or {}))

    # --- import -----------------------------------------------------------------

    async def import_session(
        self, session: Session, *, session_id: str | None = None, within_s: float = 10.0
    ) -> int:
        """Publish ``session`` into this server's recording stream; returns the events stored.

        Creates a stream that takes imports only (no live capture: that is the
        edges' ``[recording]``) when the server has none.

        Raises:
            ReplayError: the session is already recorded here, or not all of it was
                stored within ``within_s``.
        """
        target_id = session_id or session.session_id
        js = self._js
        try:
            await js.stream_info(STREAM)
        except NotFoundError:
            await js.add_stream(stream_config(RecordingConfig(), enabled=False))
        if await self._stored(target_id):
            raise ReplayError(
                f"session {target_id!r} is already recorded on this server; "
                "import it --as another id"
            )
        for event in session.events:
            subject, payload = self._codec.encode(target_id, event)
            # A plain publish: the stream is no_ack, so there is no reply to wait for.
            await self._nc.publish(
                subjects.imported(subject), payload, headers={RECORDED_AT_HEADER: str(event.at_ns)}
            )
        await self._nc.flush()
        expected = len(session.events)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        # The stream stores what the server received on its own schedule, and sends
        # no acks: its count is the only sign. Polled, bounded.
        while (stored := await self._stored(target_id)) < expected:
            if loop.time() >= deadline:
                raise ReplayError(f"only {stored} of {expected} events were stored")
            await asyncio.sleep(0.02)
        return stored

    async def _stored(self, session_id: str) -> int:
        total = 0
        for pattern in subjects.session_recording(session_id):
            info = await self._js.stream_info(STREAM, subjects_filter=pattern)
            total += sum((info.state.subjects or {}).values())
        return total


def _all_session_filters() -> tuple[str, ...]:
    # Everything a session has: the live filters without the import prefix.
    return tuple(s for s in subjects.recording_subjects() if s != subjects.all_imported())
