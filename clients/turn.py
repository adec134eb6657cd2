"""One Yap turn on an open WebSocket: send ``start``, read frames until ``done``.

The wire frames carry no turn id, so a turn's frames are told apart by order: a
turn begins at its ``ack`` for ``start`` and ends at the first ``done`` or
``error``. On a connection that already ran a turn, output frames that arrive
before this turn's ``ack`` are leftovers of the previous one (a ``done`` after an
``error``, say) and are counted as stale, not attributed. When the server does tag
frames with a ``turn_id``, frames of other turns are dropped by that too.

A barge-in (a second ``start`` or a ``cancel`` sent mid-stream) ends the old turn
at its ``done`` with ``cancelled`` or, for a ``start``, at the new turn's ``ack``,
whichever comes first; the time from sending the barge-in to that frame is the
cancel latency. The new turn is then read with :func:`collect_turn`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from clients.metrics import TimedFrame, TurnMetrics, turn_metrics

__all__ = [
    "CONNECTION_CLOSED",
    "BargeIn",
    "BargeInOutcome",
    "ClientError",
    "FrameStream",
    "TurnResult",
    "TurnTimeout",
    "collect_turn",
    "open_stream",
    "run_turn",
    "start_message",
    "with_api_key",
]

# Error code recorded when the server closes the connection mid-turn without an
# error frame; the server's own codes are snake_case words of the same shape.
CONNECTION_CLOSED = "connection_closed"
_OUTPUT_TYPES = frozenset({"toolcall", "token", "final", "done"})

FrameCallback = Callable[[TimedFrame], None]


class ClientError(Exception):
    """Root of the client's exceptions."""


class TurnTimeout(ClientError, TimeoutError):
    """No frame came within the receive timeout, or the turn's deadline passed.

    ``partial`` is what had been received until then.
    """

    def __init__(self, message: str, partial: TurnResult) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Send ``message`` (a ``start`` or a ``cancel``) once ``after_tokens`` tokens arrived."""

    after_tokens: int
    message: Mapping[str, Any]

    @property
    def is_start(self) -> bool:
        return self.message.get("type") == "start"


@dataclass(frozen=True, slots=True)
class BargeInOutcome:
    """When a barge-in was sent and what acknowledged it, if anything did.

    ``acknowledged_by`` is ``"done"`` for the old turn's ``done`` with ``cancelled``,
    ``"ack"`` for the new turn's ``ack``, ``None`` when the old turn ended on its
    own first (the barge-in came too late to cancel anything).
    """

    sent_at: float
    acknowledged_at: float | None = None
    acknowledged_by: Literal["done", "ack"] | None = None

    @property
    def latency_ms(self) -> float | None:
        if self.acknowledged_at is None:
            return None
        return (self.acknowledged_at - self.sent_at) * 1000.0


@dataclass(frozen=True, slots=True)
class TurnResult:
    """Everything one turn received, in order, with what it amounted to."""

    sent_at: float
    frames: tuple[TimedFrame, ...]
    ack: Mapping[str, Any] | None
    toolcall_status: str | None
    toolcall_raw: Any
    text: str
    error_codes: tuple[str, ...]
    error_messages: tuple[str, ...]
    cancelled: bool
    done: bool
    closed: bool
    usage: Mapping[str, Any] | None
    stale: int
    barge_in: BargeInOutcome | None

    @property
    def ok(self) -> bool:
        """Completed normally: a ``done`` that was not a cancel, and no error."""
        return self.done and not self.cancelled and not self.error_codes

    def metrics(self) -> TurnMetrics:
        return turn_metrics(self.sent_at, self.frames)


class FrameStream:
    """Timestamped, JSON-decoded frames of one connection, with push-back.

    It carries what one turn leaves to the next: how many turns ran (so that
    leftovers are recognised) and a frame read too far (the new turn's ``ack``
    that ended a barged-in turn).
    """

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._pending: deque[TimedFrame] = deque()
        self.turns = 0
        self.invalid_frames = 0

    @property
    def closed(self) -> bool:
        return self._connection.close_code is not None

    async def send(self, message: Mapping[str, Any]) -> float:
        """Send ``message`` as JSON; returns the monotonic time taken just before.

        On a closed connection the message is dropped silently: the close, and any
        frame the server sent before it (an ``authentication_failed`` error, say),
        still come out of :meth:`receive`, which is where the turn reports them.
        """
        payload = json.dumps(message, ensure_ascii=False)
        sent_at = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            await self._connection.send(payload)
        return sent_at

    def push_back(self, frame: TimedFrame) -> None:
        self._pending.appendleft(frame)

    async def receive(self, timeout_s: float | None) -> TimedFrame:
        """The next JSON object frame; non-JSON frames are counted and skipped.

        Raises:
            TimeoutError: nothing came within ``timeout_s``.
            websockets.exceptions.ConnectionClosed: the connection ended.
        """
        if self._pending:
            return self._pending.popleft()
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self._connection.recv()
                at = time.monotonic()
                try:
                    data = json.loads(raw)
                except ValueError:
                    self.invalid_frames += 1
                    continue
                if isinstance(data, dict):
                    return TimedFrame(at=at, data=data)
                self.invalid_frames += 1

    async def close(self) -> None:
        await self._connection.close()


def with_api_key(url: str, api_key: str) -> str:
    """``url`` with ``api_key`` as a query parameter, unless it already has one."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "api_key" for key, _ in query):
        return url
    query.append(("api_key", api_key))
    return urlunsplit(parts._replace(query=urlencode(query)))


@asynccontextmanager
async def open_stream(
    url: str, api_key: str, *, open_timeout_s: float | None = 10.0
) -> AsyncIterator[FrameStream]:
    """Connect to the edge and yield a :class:`FrameStream`; closes on exit.

    No proxy is used even where the environment names one: a benchmark through
    a proxy would measure the proxy.

    Raises:
        websockets.exceptions.InvalidStatus: the server refused the handshake.
        OSError, TimeoutError: the server could not be reached in time.
    """
    async with connect(
        with_api_key(url, api_key),
        max_queue=None,  # never let a slow reader push back on the server under test
        proxy=None,
        open_timeout=open_timeout_s,
        # A server that stopped answering must not hold each closing client for 10 s.
        close_timeout=2.0,
    ) as connection:
        yield FrameStream(connection)


def start_message(
    session_id: str,
    user_utterance: str,
    *,
    assistant_gender: str = "female",
    persona_style: str = "wholesome",
    history_text: str = "",
    server_history: bool = False,
) -> dict[str, Any]:
    """A ``start``; with ``server_history`` the edge keeps the conversation, and a
    ``history_text`` goes only when one is given (with the flag, sending it replaces
    the session's stored history, even when empty)."""
    message: dict[str, Any] = {
        "type": "start",
        "session_id": session_id,
        "assistant_gender": assistant_gender,
        "persona_style": persona_style,
        "history_text": history_text,
        "user_utterance": user_utterance,
    }
    if server_history:
        message["server_history"] = True
        if not history_text:
            del message["history_text"]
    return message


@dataclass(slots=True)
class _Collector:
    """Mutable state of one turn while its frames arrive; frozen by ``result()``."""

    sent_at: float
    frames: list[TimedFrame] = field(default_factory=list)
    ack: Mapping[str, Any] | None = None
    turn_id: str | None = None
    toolcall_status: str | None = None
    toolcall_raw: Any = None
    streamed: str = ""
    normalized: str | None = None
    tokens: int = 0
    outputs: int = 0
    error_codes: list[str] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False
    closed: bool = False
    usage: Mapping[str, Any] | None = None
    stale: int = 0
    barge_in: BargeInOutcome | None = None

    def result(self) -> TurnResult:
        return TurnResult(
            sent_at=self.sent_at,
            frames=tuple(self.frames),
            ack=self.ack,
            toolcall_status=self.toolcall_status,
            toolcall_raw=self.toolcall_raw,
            text=self.normalized if self.normalized is not None else self.streamed,
            error_codes=tuple(self.error_codes),
            error_messages=tuple(self.error_messages),
            cancelled=self.cancelled,
            done=self.done,
            closed=self.closed,
            usage=self.usage,
            stale=self.stale,
            barge_in=self.barge_in,
        )

    def add_error(self, data: Mapping[str, Any]) -> None:
        code = data.get("error_code")
        self.error_codes.append(code if isinstance(code, str) and code else "unknown_error")
        message = data.get("message")
        self.error_messages.append(message if isinstance(message, str) else "")


def _timeout_for(recv_timeout_s: float | None, deadline: float | None) -> float | None:
    if deadline is None:
        return recv_timeout_s
    remaining = max(deadline - time.monotonic(), 0.0)
    return remaining if recv_timeout_s is None else min(recv_timeout_s, remaining)


async def collect_turn(
    stream: FrameStream,
    sent_at: float,
    *,
    recv_timeout_s: float | None = 60.0,
    deadline: float | None = None,
    barge_in: BargeIn | None = None,
    skip_cancelled_done: bool = False,
    on_frame: FrameCallback | None = None,
) -> TurnResult:
    """Read the frames of the turn whose ``start`` was sent at ``sent_at``.

    Args:
        recv_timeout_s: longest wait for any one frame (``None``: no limit).
        deadline: ``time.monotonic()`` by which the turn must end.
        barge_in: what to send mid-stream, and when.
        skip_cancelled_done: the previous turn was ended by this turn's ``ack``
            and its ``done`` with ``cancelled`` may still come; drop it if it
            arrives before this turn's first output.
        on_frame: called with each frame of this turn as it arrives.

    Raises:
        TurnTimeout: a wait ran past ``recv_timeout_s`` or ``deadline``.
    """
    state = _Collector(sent_at=sent_at)
    # Leftovers are possible only where an earlier turn ran on this connection.
    expect_ack = stream.turns > 0
    stream.turns += 1
    while True:
        try:
            frame = await stream.receive(_timeout_for(recv_timeout_s, deadline))
        except TimeoutError as exc:
            raise TurnTimeout("no frame before the timeout", state.result()) from exc
        except ConnectionClosed:
            state.closed = True
            if not state.error_codes:
                state.add_error({"error_code": CONNECTION_CLOSED, "message": "connection closed"})
            break
        kind = frame.type
        data = frame.data
        if state.ack is None:
            if kind == "ack" and data.get("for") == "start":
                state.ack = data
                turn_id = data.get("turn_id")
                state.turn_id = turn_id if isinstance(turn_id, str) else None
                _keep(state, frame, on_frame)
                continue
            if kind == "error":
                # The start itself was refused: no ack and no done will follow.
                _keep(state, frame, on_frame)
                state.add_error(data)
                break
            if expect_ack and kind in _OUTPUT_TYPES:
                state.stale += 1
                continue
        if (
            kind == "ack"
            and data.get("for") == "start"
            and state.barge_in is not None
            and barge_in is not None
            and barge_in.is_start
        ):
            # The barge-in's turn began (its ack carries a new turn id, so this comes
            # before the id filter): this turn is over; the frame is the next one's.
            stream.push_back(frame)
            state.cancelled = True
            state.barge_in = BargeInOutcome(state.barge_in.sent_at, frame.at, "ack")
            break
        if state.turn_id is not None and data.get("turn_id") not in (None, state.turn_id):
            state.stale += 1
            continue
        if skip_cancelled_done and kind == "done" and data.get("cancelled") and not state.outputs:
            skip_cancelled_done = False
            state.stale += 1
            continue
        _keep(state, frame, on_frame)
        if kind in _OUTPUT_TYPES:
            state.outputs += 1
        if kind == "toolcall" and state.toolcall_status is None:
            status = data.get("status")
            state.toolcall_status = status if isinstance(status, str) else None
            state.toolcall_raw = data.get("raw")
        elif kind == "token":
            text = data.get("text")
            state.streamed += text if isinstance(text, str) else ""
            state.tokens += 1
        elif kind == "final":
            normalized = data.get("normalized_text")
            if isinstance(normalized, str) and normalized:
                state.normalized = normalized
        elif kind == "error":
            state.add_error(data)
            break
        elif kind == "done":
            state.done = True
            state.cancelled = bool(data.get("cancelled"))
            usage = data.get("usage")
            state.usage = usage if isinstance(usage, dict) else None
            if state.barge_in is not None and state.cancelled:
                state.barge_in = BargeInOutcome(state.barge_in.sent_at, frame.at, "done")
            break
        if (
            barge_in is not None
            and state.barge_in is None
            and kind == "token"
            and state.tokens >= barge_in.after_tokens
        ):
            state.barge_in = BargeInOutcome(sent_at=await stream.send(barge_in.message))
    return state.result()


def _keep(state: _Collector, frame: TimedFrame, on_frame: FrameCallback | None) -> None:
    state.frames.append(frame)
    if on_frame is not None:
        on_frame(frame)


async def run_turn(
    stream: FrameStream,
    start: Mapping[str, Any],
    *,
    recv_timeout_s: float | None = 60.0,
    deadline: float | None = None,
    barge_in: BargeIn | None = None,
    on_frame: FrameCallback | None = None,
) -> TurnResult:
    """Send ``start`` and read its turn; see :func:`collect_turn`.

    Raises:
        TurnTimeout: a wait ran past ``recv_timeout_s`` or ``deadline``.
    """
    sent_at = await stream.send(start)
    return await collect_turn(
        stream,
        sent_at,
        recv_timeout_s=recv_timeout_s,
        deadline=deadline,
        barge_in=barge_in,
        on_frame=on_frame,
    )
