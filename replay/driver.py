"""Re-drive a live edge over WebSockets with a recorded session's script.

One :class:`SessionDriver` per replayed session: it opens a connection per
recorded connection, sends each step when its condition holds (see
:mod:`replay.timeline`) and reads what comes back into :class:`ObservedTurn`
values. A reader task per connection turns frames into turn state; the sender
waits on that state, never on wall time, except for the recorded idle gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js.errors import BucketNotFoundError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from clients.metrics import TimedFrame, TurnMetrics, turn_metrics
from clients.turn import with_api_key
from edge.server import SESSIONS_BUCKET
from edge.sessions import SessionSettings
from replay.errors import ReplayError, TargetUnreachable
from replay.timeline import Anchor, Step, Timeline

__all__ = ["ObservedTurn", "Pacing", "SessionDriver", "SessionRun", "fresh_session_id", "restore"]

_INTERRUPTS: Final = frozenset({"cancel", "start", "end"})


def fresh_session_id() -> str:
    return f"replay-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True, slots=True)
class Pacing:
    """``speed`` scales recorded idle gaps (2: half as long); ``asap`` drops them."""

    speed: float = 1.0
    asap: bool = False
    # Longest wait for any one condition (an ack, an anchor, a turn's end).
    timeout_s: float = 60.0

    def gap(self, recorded_s: float) -> float:
        return 0.0 if self.asap else recorded_s / self.speed


@dataclass(slots=True)
class ObservedTurn:
    """One replayed turn, as the client saw it; times are ``time.monotonic()``."""

    index: int
    sent_at: float
    frames: list[TimedFrame] = field(default_factory=list)
    ack: Mapping[str, Any] | None = None
    toolcall_status: str | None = None
    streamed: str = ""
    final: str | None = None
    ended_by: str | None = None  # done, cancel, end, barge_in, error, closed, disconnect
    error_code: str | None = None
    usage: Mapping[str, Any] | None = None
    interrupt_sent_at: float | None = None
    interrupt_acked_at: float | None = None

    @property
    def ended(self) -> bool:
        return self.ended_by is not None

    @property
    def text(self) -> str:
        return self.final if self.final is not None else " ".join(self.streamed.split())

    @property
    def cached_tokens(self) -> int | None:
        value = self.usage.get("cached_tokens") if self.usage else None
        return value if isinstance(value, int) else None

    def metrics(self) -> TurnMetrics:
        return turn_metrics(self.sent_at, self.frames)


@dataclass(slots=True)
class SessionRun:
    """Everything one replay of a session saw."""

    original_id: str
    session_id: str
    turns: list[ObservedTurn] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    # Things that went wrong on the way: timeouts, anchors a turn never reached.
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0


async def restore(nc: NatsClient, session_id: str, timeline: Timeline) -> bool:
    """Write the recorded settings (seed, clock, persona, server-kept history) under
    ``session_id``.

    The edge reads a session's KV entry on its first start, so the replayed session
    renders the same clock into its prompt. Returns False when nothing was recorded
    to restore.

    Raises:
        ReplayError: the target has no session bucket, or refused the write.
    """
    snapshot = timeline.session.settings
    if snapshot is None:
        return False
    settings = SessionSettings(
        assistant_gender=snapshot.assistant_gender,  # type: ignore[arg-type]
        persona_style=snapshot.persona_style,
        user_identity=snapshot.user_identity,
        persona_text=snapshot.persona_text,
        seed=snapshot.seed,
        now=snapshot.now,
        history=snapshot.history,
    )
    try:
        kv = await nc.jetstream(timeout=5.0).key_value(SESSIONS_BUCKET)
        await kv.put(session_id, msgspec.json.encode(settings))
    except BucketNotFoundError:
        raise ReplayError(
            f"the target bus has no {SESSIONS_BUCKET} bucket (is its edge running on "
            "JetStream?); --no-restore replays without the recorded clock"
        ) from None
    except Exception as exc:
        raise ReplayError(f"cannot restore the session's settings: {exc!r}") from None
    return True


class _Connection:
    """One WebSocket of the replay, and the state its reader keeps."""

    def __init__(
        self,
        ws: ClientConnection,
        run: SessionRun,
        on_turn: Callable[[ObservedTurn], None] | None,
    ) -> None:
        self.ws = ws
        self.run = run
        self._on_turn = on_turn
        self.current: ObservedTurn | None = None
        self.start_times: deque[float] = deque()  # starts sent that should become turns
        self.expected_rejections = 0
        self.pending_error: Mapping[str, Any] | None = None
        self.closed = False
        self.changed = asyncio.Event()
        self.last_end_at: float | None = None

    @property
    def idle(self) -> bool:
        return self.closed or (self.current is None and not self.start_times)

    def turn(self, index: int) -> ObservedTurn | None:
        turns = self.run.turns
        return turns[index - 1] if 0 < index <= len(turns) else None

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                at = time.monotonic()
                try:
                    data = json.loads(raw)
                except ValueError:
                    continue  # not a frame of the protocol; nothing to attribute
                if isinstance(data, dict):
                    self.on_frame(TimedFrame(at=at, data=data))
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._flush_error()
            if self.current is not None:
                self._end(self.current, "closed", time.monotonic())
            self.changed.set()

    def on_frame(self, frame: TimedFrame) -> None:
        data, kind = frame.data, frame.type
        pending = self.pending_error
        if pending is not None:
            self.pending_error = None
            turn = self.current
            if (
                kind == "done"
                and turn is not None
                and data.get("error_code") == pending.get("error_code")
            ):
                turn.frames.append(frame)
                turn.error_code = str(pending.get("error_code"))
                self._end(turn, "error", frame.at)
                self.changed.set()
                return
            self._reject(pending)  # it answered a frame, not the turn
        turn = self.current
        if kind == "ack" and data.get("for") == "start":
            if turn is not None:
                turn.interrupt_acked_at = turn.interrupt_acked_at or frame.at
                self._end(turn, "barge_in", frame.at)
            sent_at = self.start_times.popleft() if self.start_times else frame.at
            turn = ObservedTurn(len(self.run.turns) + 1, sent_at, [frame], ack=data)
            self.run.turns.append(turn)
            self.current = turn
        elif kind == "error":
            if turn is not None:
                self.pending_error = data  # the turn's failure if its done follows
            elif self.expected_rejections > 0:
                self._reject(data)
            elif self.start_times:
                self.start_times.popleft()  # the start was refused: no turn
                self._reject(data)
            else:
                self._reject(data)
        elif turn is not None:
            turn.frames.append(frame)
            if kind == "toolcall" and turn.toolcall_status is None:
                turn.toolcall_status = str(data.get("status"))
            elif kind == "token":
                text = data.get("text")
                turn.streamed += text if isinstance(text, str) else ""
            elif kind == "final":
                final = data.get("normalized_text")
                turn.final = final if isinstance(final, str) else None
            elif kind == "done":
                usage = data.get("usage")
                turn.usage = usage if isinstance(usage, dict) else None
                if data.get("cancelled"):
                    turn.interrupt_acked_at = frame.at
                    self._end(turn, "cancel", frame.at)
                elif isinstance(data.get("error_code"), str):
                    turn.error_code = data["error_code"]
                    self._end(turn, "error", frame.at)
                else:
                    self._end(turn, "done", frame.at)
        self.changed.set()

    def _end(self, turn: ObservedTurn, how: str, at: float) -> None:
        turn.ended_by = how
        self.last_end_at = at
        if self.current is turn:
            self.current = None
        if self._on_turn is not None:
            self._on_turn(turn)

    def _reject(self, data: Mapping[str, Any]) -> None:
        if self.expected_rejections > 0:
            self.expected_rejections -= 1
        self.run.rejections.append(str(data.get("error_code")))

    def _flush_error(self) -> None:
        if self.pending_error is not None:
            self._reject(self.pending_error)
            self.pending_error = None

    async def until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``condition()`` holds (checked after every frame); False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while not condition():
                    self.changed.clear()
                    if condition():
                        break
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True


class SessionDriver:
    """Replays one recorded session against ``url`` under ``session_id``."""

    def __init__(
        self,
        timeline: Timeline,
        url: str,
        api_key: str,
        pacing: Pacing,
        *,
        session_id: str | None = None,
        on_turn: Callable[[ObservedTurn], None] | None = None,
    ) -> None:
        self._timeline = timeline
        self._url = url
        self._api_key = api_key
        self._pacing = pacing
        self._on_turn = on_turn
        original = timeline.session.session_id
        self.run = SessionRun(original, session_id or fresh_session_id())
        # Which recorded steps the edge answered with an error outside a turn.
        self._rejected = _rejected_steps(timeline)

    async def drive(self) -> SessionRun:
        """Send every step, read every reply; returns what was seen.

        Raises:
            TargetUnreachable: the edge refused or did not answer the connection.
        """
        began = time.monotonic()
        steps = self._timeline.steps
        index = 0
        while index < len(steps):
            conn_id = steps[index].conn
            batch = []
            while index < len(steps) and steps[index].conn == conn_id:
                batch.append(steps[index])
                index += 1
            await self._connection(batch)
        self.run.wall_s = time.monotonic() - began
        return self.run

    async def _connection(self, steps: list[Step]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            try:
                ws = await stack.enter_async_context(
                    connect(
                        with_api_key(self._url, self._api_key),
                        max_queue=None,  # the replay must never push back on the edge
                        proxy=None,
                        open_timeout=self._pacing.timeout_s,
                        close_timeout=2.0,
                        max_size=None,
                    )
                )
            except (InvalidHandshake, OSError, TimeoutError) as exc:
                raise TargetUnreachable(f"cannot reach the edge at {self._url}: {exc}") from None
            connection = _Connection(ws, self.run, self._on_turn)
            async with asyncio.TaskGroup() as group:
                group.create_task(connection.read())
                try:
                    await self._send_all(connection, steps)
                    if not await connection.until(lambda: connection.idle, self._pacing.timeout_s):
                        self.run.problems.append("the last turn did not end in time")
                finally:
                    await ws.close()

    async def _send_all(self, connection: _Connection, steps: list[Step]) -> None:
        pacing = self._pacing
        last_sent: float | None = None
        for step in steps:
            if connection.closed:
                self.run.problems.append(f"the edge closed the connection before step {step.index}")
                return
            if step.anchor is not None:
                await self._reach(connection, step.anchor, step)
            else:
                if not await connection.until(lambda: connection.idle, pacing.timeout_s):
                    self.run.problems.append(
                        f"timed out before step {step.index} ({step.message_type})"
                    )
                    return
                moments = [t for t in (last_sent, connection.last_end_at) if t is not None]
                if moments:
                    reference = max(moments)
                    delay = pacing.gap(step.gap_s) - (time.monotonic() - reference)
                    if delay > 0:
                        await asyncio.sleep(delay)  # the recorded pause, not a synchronisation
            if step.close:
                await connection.ws.close()
                return
            interrupted = connection.current
            last_sent = await self._send(connection, step)
            if step.starts_turn is not None:
                connection.start_times.append(last_sent)
            if step.index in self._rejected:
                connection.expected_rejections += 1
            if interrupted is not None and step.message_type in _INTERRUPTS:
                interrupted.interrupt_sent_at = last_sent

    async def _reach(self, connection: _Connection, anchor: Anchor, step: Step) -> None:
        def reached() -> bool:
            turn = connection.turn(anchor.turn)
            if turn is None:
                # No start is pending and no turn runs: that turn is not coming (its
                # start was refused this time); go on rather than wait out the timeout.
                return connection.idle
            if turn.ended:
                return True
            return len(turn.streamed) >= anchor.chars and (
                not anchor.toolcall or turn.toolcall_status is not None
            )

        if not await connection.until(reached, self._pacing.timeout_s):
            self.run.problems.append(f"timed out waiting for {anchor.describe()}")
            return
        turn = connection.turn(anchor.turn)
        if turn is None or (turn.ended and len(turn.streamed) < anchor.chars):
            got = len(turn.streamed) if turn is not None else 0
            self.run.problems.append(
                f"turn {anchor.turn} ended at {got} chars, before {step.message_type} "
                f"was due ({anchor.describe()})"
            )

    async def _send(self, connection: _Connection, step: Step) -> float:
        # A binary frame's bytes are not recorded, only its size: any bytes get the
        # same answer (binary frames are refused).
        payload: str | bytes = (
            b"\x00" * max(step.size, 1)
            if step.text is None
            else _rewrite(step.text, self.run.original_id, self.run.session_id)
        )
        sent_at = time.monotonic()
        with contextlib.suppress(ConnectionClosed):  # the reader reports the close
            await connection.ws.send(payload)
        return sent_at


def _rejected_steps(timeline: Timeline) -> frozenset[int]:
    """Steps the edge answered with an error record before the next client frame."""
    rejected: set[int] = set()
    last_step: int | None = None
    steps_by_at = {step.at_ns: step.index for step in timeline.steps if not step.close}
    for event in timeline.session.events:
        if event.direction == "client":
            last_step = steps_by_at.get(event.at_ns)
        elif event.direction == "edge" and event.kind == "error" and last_step is not None:
            rejected.add(last_step)
            last_step = None
    return frozenset(rejected)


def _rewrite(text: str, original: str, fresh: str) -> str:
    """``text`` with the recorded session id replaced by the replay's (JSON or not)."""
    if original not in text:
        return text
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    if isinstance(obj, dict) and obj.get("session_id") == original:
        obj["session_id"] = fresh
        return json.dumps(obj, ensure_ascii=False)
    return text
