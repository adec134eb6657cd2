"""A recorded session read back as turns, and as the script that re-drives it.

Turns come from the edge's records (start and end, outcome) and the bus events of
their turn id (tool decision, reply text, usage). The script is the client's
frames in order, each with *when* to send it:

* a frame that arrived while a turn ran (a cancel, a barge-in start, a ping) is
  anchored to that turn's progress: its number of reply characters and whether
  its tool decision had been made. Replay sends it when the replayed turn gets
  there, at any speed.
* any other frame waits for the previous turn to end, then for the recorded gap
  (scaled by ``--speed``, none with ``--asap``).

Times of bus events are the stream's (the nats-server's clock), times of records
the edge's. On one host they are one clock; on two they differ by the skew.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from replay.events import Event, Session

__all__ = [
    "Anchor",
    "RecordedTurn",
    "Step",
    "Timeline",
    "build_timeline",
    "render_list",
    "render_show",
    "signature",
]

EndedBy = Literal["done", "cancel", "barge_in", "end", "disconnect", "error"]
_NS_PER_MS: Final = 1_000_000
# What a client frame does to a running turn.
_INTERRUPTS: Final[dict[str, EndedBy]] = {"cancel": "cancel", "start": "barge_in", "end": "end"}
_SHOW_TEXT: Final = 72


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where in a turn something happened: after ``chars`` of its reply, and its decision?"""

    turn: int
    chars: int
    toolcall: bool

    def describe(self) -> str:
        decided = ", after the tool decision" if self.toolcall else ""
        return f"turn {self.turn} at {self.chars} chars{decided}"


@dataclass(slots=True)
class RecordedTurn:
    """One turn as recorded; times in ns since the epoch."""

    index: int
    turn_id: str
    conn: str
    start_ns: int
    ended_ns: int | None = None
    outcome: str | None = None
    error_code: str | None = None
    ended_by: EndedBy | None = None
    interrupt: Anchor | None = None
    toolcall_status: str | None = None
    toolcall_raw: str | None = None
    toolcall_ns: int | None = None
    first_token_ns: int | None = None
    text: str = ""
    tokens: int = 0
    dones: dict[str, dict[str, Any]] = field(default_factory=dict)
    legs: dict[str, int] = field(default_factory=dict)

    @property
    def normalized_text(self) -> str:
        return " ".join(self.text.split())

    @property
    def cached_tokens(self) -> int | None:
        done = self.dones.get("chat")
        value = done.get("cached_tokens") if done else None
        return value if isinstance(value, int) else None

    def latencies_ms(self) -> dict[str, float | None]:
        """toolcall, first token and total, from the start's arrival at the edge."""

        def since(at: int | None) -> float | None:
            return None if at is None else (at - self.start_ns) / _NS_PER_MS

        total = since(self.ended_ns) if self.ended_by in ("done", "error") else None
        return {
            "toolcall_ms": since(self.toolcall_ns),
            "first_token_ms": since(self.first_token_ns),
            "total_ms": total,
        }


@dataclass(frozen=True, slots=True)
class Step:
    """One client frame to send again (or, with ``close``, the client going away)."""

    index: int
    conn: str
    at_ns: int
    text: str | None
    size: int
    message_type: str
    anchor: Anchor | None
    gap_s: float
    starts_turn: int | None = None
    close: bool = False
    redacted: bool = False


@dataclass(slots=True)
class Timeline:
    session: Session
    turns: list[RecordedTurn]
    steps: list[Step]
    # Error codes the edge answered outside turns (rejected frames), in order.
    rejections: list[str]

    @property
    def redacted(self) -> bool:
        return any(step.redacted for step in self.steps) or self.session.redacted


def _message_type(text: str | None) -> str:
    if text is None:
        return "binary"
    try:
        obj = json.loads(text)
    except ValueError:
        return "not-json"
    if isinstance(obj, dict) and isinstance(obj.get("type"), str):
        return obj["type"]
    return "not-a-message"


def build_timeline(session: Session) -> Timeline:
    """Turns and script of ``session`` (events in time order)."""
    turns: list[RecordedTurn] = []
    by_id: dict[str, RecordedTurn] = {}
    running: list[RecordedTurn] = []
    steps: list[Step] = []
    rejections: list[str] = []
    # Per connection: the step of its latest start that has no turn yet.
    waiting_start: dict[str, int] = {}
    reference_ns: int | None = None  # the later of the last frame and the last turn end
    last_conn: str | None = None

    def anchor_of(turn: RecordedTurn) -> Anchor:
        return Anchor(turn.index, len(turn.text), turn.toolcall_status is not None)

    for event in session.events:
        payload = event.payload
        if event.direction == "client":
            conn = str(payload.get("conn", ""))
            text = None if payload.get("binary") else str(payload.get("text", ""))
            kind = _message_type(text)
            current = next((t for t in reversed(running) if t.conn == conn), None)
            anchor = anchor_of(current) if current is not None else None
            gap_s = 0.0
            if anchor is None and reference_ns is not None and conn == last_conn:
                gap_s = max(event.at_ns - reference_ns, 0) / 1e9
            if current is not None and kind in _INTERRUPTS and current.interrupt is None:
                current.interrupt = anchor
                current.ended_by = _INTERRUPTS[kind]
            steps.append(
                Step(
                    index=len(steps),
                    conn=conn,
                    at_ns=event.at_ns,
                    text=text,
                    size=int(payload.get("size", 0)),
                    message_type=kind,
                    anchor=anchor,
                    gap_s=gap_s,
                    redacted=bool(payload.get("redacted")),
                )
            )
            if kind == "start":
                waiting_start[conn] = len(steps) - 1
            reference_ns = event.at_ns
            last_conn = conn
        elif event.direction == "edge":
            _on_record(event, turns, by_id, running, steps, waiting_start, rejections)
            if event.kind == "turn_end":
                reference_ns = max(reference_ns or 0, event.at_ns)
                turn = by_id.get(str(payload.get("turn_id")))
                if turn is not None and turn.ended_by == "disconnect":
                    steps.append(
                        Step(
                            index=len(steps),
                            conn=turn.conn,
                            at_ns=event.at_ns,
                            text=None,
                            size=0,
                            message_type="close",
                            anchor=turn.interrupt,
                            gap_s=0.0,
                            close=True,
                        )
                    )
        else:
            _on_bus(event, by_id)
    return Timeline(session, turns, steps, rejections)


def _on_record(
    event: Event,
    turns: list[RecordedTurn],
    by_id: dict[str, RecordedTurn],
    running: list[RecordedTurn],
    steps: list[Step],
    waiting_start: dict[str, int],
    rejections: list[str],
) -> None:
    payload = event.payload
    conn = str(payload.get("conn", ""))
    if event.kind == "turn":
        step_index = waiting_start.pop(conn, None)
        start_ns = steps[step_index].at_ns if step_index is not None else event.at_ns
        turn = RecordedTurn(len(turns) + 1, str(payload["turn_id"]), conn, start_ns)
        if step_index is not None:
            steps[step_index] = dataclasses.replace(steps[step_index], starts_turn=turn.index)
        turns.append(turn)
        by_id[turn.turn_id] = turn
        running.append(turn)
    elif event.kind == "turn_end":
        turn = by_id.get(str(payload.get("turn_id")))
        if turn is None:
            return
        turn.ended_ns = event.at_ns
        turn.outcome = str(payload.get("outcome"))
        code = payload.get("error_code")
        turn.error_code = code if isinstance(code, str) else None
        if turn in running:
            running.remove(turn)
        if turn.outcome == "completed":
            turn.ended_by, turn.interrupt = "done", None  # an interrupt that was refused
        elif turn.outcome == "failed":
            turn.ended_by, turn.interrupt = "error", None
        elif turn.interrupt is None:
            # Cancelled with no cancel, start or end from the client: it went away.
            turn.ended_by = "disconnect"
            turn.interrupt = Anchor(turn.index, len(turn.text), turn.toolcall_status is not None)
    elif event.kind == "error":
        rejections.append(str(payload.get("code")))


def _on_bus(event: Event, by_id: dict[str, RecordedTurn]) -> None:
    turn = by_id.get(event.turn_id or "")
    if turn is None:
        return
    payload = event.payload
    if event.direction == "in":
        turn.legs.setdefault(event.kind, event.at_ns)
        return
    # What came after an interrupted turn ended reached no client. A completed turn's
    # edge forwarded every token before its done, but the stream (its own clock, and
    # storing a moment later) may date the last ones after the edge's end record.
    forwarded = turn.ended_ns is None or turn.outcome == "completed"
    match event.kind:
        case "toolcall" if forwarded and turn.toolcall_status is None:
            turn.toolcall_status = str(payload.get("status"))
            turn.toolcall_raw = str(payload.get("raw"))
            turn.toolcall_ns = event.at_ns
        case "token" if forwarded:
            text = str(payload.get("text", ""))
            if text and turn.first_token_ns is None:
                turn.first_token_ns = event.at_ns
            turn.text += text
            turn.tokens += 1
        case "done":
            turn.dones[str(payload.get("kind"))] = payload
        case _:
            pass


def signature(
    *,
    toolcall: str | None,
    text: bool,
    ended_by: str | None,
    error_code: str | None,
    anchor: Anchor | None,
) -> tuple[str, ...]:
    """A turn's frame types in order, token runs as one: what both sides are compared on.

    For an interrupted turn only what its anchor promises counts (the decision if
    it was made, text if any had come): anything past that is a race between the
    interrupt and the stream, at any speed.
    """
    frames = ["ack"]
    if toolcall is not None and (anchor is None or anchor.toolcall):
        frames.append(f"toolcall:{toolcall}")
    if text and (anchor is None or anchor.chars > 0):
        frames.append("token")
    match ended_by:
        case "done":
            frames += ["final", "done"]
        case "cancel" | "end":
            frames.append("done:cancelled")
        case "error":
            frames += [f"error:{error_code}", f"done:{error_code}"]
        case _:
            pass  # a barge-in or a disconnect ends the turn silently
    return tuple(frames)


def recorded_signature(turn: RecordedTurn) -> tuple[str, ...]:
    return signature(
        toolcall=turn.toolcall_status,
        text=bool(turn.text),
        ended_by=turn.ended_by,
        error_code=turn.error_code,
        anchor=turn.interrupt,
    )


# --- rendering ----------------------------------------------------------------------


def _utc(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _clip(text: str, width: int = _SHOW_TEXT) -> str:
    text = " ".join(text.split())
    return json.dumps(text if len(text) <= width else text[: width - 1] + "…", ensure_ascii=False)


def outcome_word(turn: RecordedTurn) -> str:
    """done / cancelled / error(code) / running, as ``list`` shows a turn."""
    match turn.outcome:
        case "completed":
            return "done"
        case "cancelled":
            return "cancelled"
        case "failed":
            return f"error({turn.error_code})"
        case _:
            return "running"


def render_list(timelines: list[Timeline]) -> str:
    lines = [f"{'session':<36} {'started (UTC)':<19} {'turns':>5} {'deploy':<7} outcomes"]
    for timeline in timelines:
        session = timeline.session
        deploy = session.deployment.deploy if session.deployment else "?"
        outcomes = " ".join(outcome_word(t) for t in timeline.turns) or "-"
        lines.append(
            f"{session.session_id:<36} {_utc(session.started_ns):<19} "
            f"{len(timeline.turns):>5} {deploy:<7} {outcomes}"
        )
    if not timelines:
        lines.append("(no recorded sessions)")
    return "\n".join(lines)


def render_show(timeline: Timeline) -> str:
    """The session as a readable timeline, times relative to its first event."""
    session = timeline.session
    origin = session.started_ns
    lines = [f"session {session.session_id}  started {_utc(origin)} UTC"]
    deployment = session.deployment
    if deployment is not None:
        models = " ".join(f"{k}={v}" for k, v in deployment.models.items() if v)
        mode = f"{deployment.deploy}{', concurrent' if deployment.concurrent else ''}"
        lines.append(
            f"deploy {mode}  models {models}  config {deployment.config_hash}"
            f"{'  redacted' if deployment.redact else ''}"
        )
    settings = session.settings
    if settings is not None:
        lines.append(
            f"settings seed {settings.seed}  now {settings.now!r}  "
            f"{settings.assistant_gender}/{settings.persona_style}"
            f"{'  persona text set' if settings.persona_text else ''}"
        )
    by_id = {turn.turn_id: turn for turn in timeline.turns}
    streaming: tuple[str, int, str, int, int] | None = None  # turn id, first ns, text, n, last

    def flush() -> None:
        nonlocal streaming
        if streaming is None:
            return
        turn_id, first_ns, text, count, _ = streaming
        turn = by_id.get(turn_id)
        label = f"turn {turn.index} " if turn else ""
        first = ""
        if turn is not None and turn.first_token_ns is not None:
            first = f", first after {(turn.first_token_ns - turn.start_ns) / _NS_PER_MS:.1f} ms"
        lines.append(
            _line(first_ns - origin, "out", f"{label}text {_clip(text)} ({count} tokens{first})")
        )
        streaming = None

    for event in session.events:
        if event.direction == "out" and event.kind == "token":
            text = str(event.payload.get("text", ""))
            turn_id = event.turn_id or ""
            if streaming is not None and streaming[0] == turn_id:
                streaming = (turn_id, streaming[1], streaming[2] + text, streaming[3] + 1, 0)
            else:
                flush()
                streaming = (turn_id, event.at_ns, text, 1, 0)
            continue
        flush()
        line = _describe(event, by_id)
        if line:
            lines.append(_line(event.at_ns - origin, event.direction, line))
    flush()
    return "\n".join(lines)


def _line(offset_ns: int, direction: str, text: str) -> str:
    return f"{offset_ns / _NS_PER_MS:>+10.1f} ms  {direction:<6}  {text}"


def _describe(event: Event, by_id: dict[str, RecordedTurn]) -> str:
    payload = event.payload
    turn = by_id.get(event.turn_id or "")
    label = f"turn {turn.index} " if turn else ""
    match event.direction, event.kind:
        case "client", _:
            if payload.get("binary"):
                return f"binary frame ({payload.get('size')} bytes)"
            return _client_line(str(payload.get("text", "")))
        case "edge", "turn":
            return f"{label}started"
        case "edge", "turn_end":
            if turn is None:
                return "turn ended"
            total = (event.at_ns - turn.start_ns) / _NS_PER_MS
            code = f" ({turn.error_code})" if turn.error_code else ""
            how = f", {turn.ended_by}" if turn.ended_by not in (None, "done", "error") else ""
            return f"{label}{outcome_word(turn)}{code} after {total:.1f} ms{how}"
        case "edge", "error":
            return f"error {payload.get('code')} (answered the client)"
        case "in", kind:
            target = f" to {event.actor_id}" if event.actor_id else ""
            if kind == "cancel":
                return f"{label}cancel ({payload.get('reason')})"
            return f"{label}{kind}{target}"
        case "out", "toolcall":
            after = ""
            if turn is not None and turn.toolcall_ns is not None:
                after = f" after {(turn.toolcall_ns - turn.start_ns) / _NS_PER_MS:.1f} ms"
            return f"{label}tool decision {payload.get('status')}{after} raw {payload.get('raw')!r}"
        case "out", "done":
            return (
                f"{label}{payload.get('kind')} done ({payload.get('reason')}, "
                f"{payload.get('completion_tokens')} tokens, {payload.get('cached_tokens')} cached)"
            )
        case "out", "error":
            code, message = payload.get("code"), payload.get("message")
            return f"{label}{payload.get('kind')} error {code}: {message}"
        case "out", "warmed":
            return f"warmed {payload.get('segment')} ({payload.get('bytes')} bytes)"
        case _:
            return f"{event.kind}"


def _client_line(text: str) -> str:
    try:
        obj = json.loads(text)
    except ValueError:
        return f"bad frame {_clip(text, 40)}"
    if not isinstance(obj, dict):
        return f"bad frame {_clip(text, 40)}"
    kind = obj.get("type")
    if kind == "start":
        return f"start {_clip(str(obj.get('user_utterance', '')))}"
    if kind in ("warm_history", "warm_persona", "set_persona"):
        keys = ", ".join(k for k in obj if k != "type")
        return f"{kind} ({keys})" if keys else str(kind)
    return str(kind)
