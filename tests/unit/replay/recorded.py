"""A synthetic recorded session, built from real encodings of each event."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from bus import subjects
from bus.codec import Codec
from bus.events import Cancel, ChatStart, Done, Persona, Token, ToolCall, ToolStart
from bus.recording import (
    ClientFrame,
    Deployment,
    EdgeError,
    Record,
    RecordCodec,
    SessionSnapshot,
    TurnEnded,
    TurnStarted,
)
from replay.events import Event, EventCodec, Session

SID = "rec-1"
EDGE = "edge-0"
CONN = "c0"
T0_NS = 1_800_000_000_000_000_000
MS = 1_000_000


def start(utterance: str) -> str:
    return json.dumps(
        {
            "type": "start",
            "session_id": SID,
            "assistant_gender": "female",
            "user_utterance": utterance,
        }
    )


def frame(at: float, text: str) -> tuple[float, str, msgspec.Struct]:
    return at, subjects.client(SID), ClientFrame(conn=CONN, at_ns=0, text=text, size=len(text))


def record(at: float, value: Record) -> tuple[float, str, msgspec.Struct]:
    return at, subjects.client(SID), value


def turn(at: float, turn_id: str, first: bool = False) -> tuple[float, str, msgspec.Struct]:
    settings = (
        SessionSnapshot(seed=42, now="02/12/2026 Wednesday 09:41 AM (morning)") if first else None
    )
    deployment = (
        Deployment(
            deploy="both", models={"chat": "tiny-qwen2", "tool": "tiny-qwen2"}, config_hash="abc"
        )
        if first
        else None
    )
    return record(
        at,
        TurnStarted(conn=CONN, at_ns=0, turn_id=turn_id, settings=settings, deployment=deployment),
    )


def end(at: float, turn_id: str, outcome: str) -> tuple[float, str, msgspec.Struct]:
    return record(at, TurnEnded(conn=CONN, at_ns=0, turn_id=turn_id, outcome=outcome))


def legs(at: float, turn_id: str, utterance: str, status: str) -> list[tuple[float, str, Any]]:
    raw = '[{"name": "take_screenshot", "arguments": {}}]' if status == "yes" else "[]"
    return [
        (at, subjects.tool_start(SID), ToolStart(SID, turn_id, utterance)),
        (
            at + 5,
            subjects.edge_out(EDGE, SID, "tool-0", "toolcall"),
            ToolCall(SID, turn_id, 1, status, raw),  # type: ignore[arg-type]
        ),
        (
            at + 6,
            subjects.edge_out(EDGE, SID, "tool-0", "done"),
            Done(SID, turn_id, 2, "tool", "stop", 100, 2),
        ),
        (
            at + 7,
            subjects.chat_start_at(SID, "chat-0"),
            ChatStart(SID, turn_id, utterance, Persona()),
        ),
    ]


def tokens(at: float, turn_id: str, words: list[str]) -> list[tuple[float, str, Any]]:
    return [
        (at + i, subjects.edge_out(EDGE, SID, "chat-0", "token"), Token(SID, turn_id, i + 1, word))
        for i, word in enumerate(words)
    ]


def chat_done(at: float, turn_id: str, seq: int, reason: str) -> tuple[float, str, Any]:
    return (
        at,
        subjects.edge_out(EDGE, SID, "chat-0", "done"),
        Done(SID, turn_id, seq, "chat", reason, 300, seq - 1, 0),  # type: ignore[arg-type]
    )


def script() -> list[tuple[float, str, Any]]:
    """(ms, subject, event): a rejected frame, a plain turn, a cancel and a barge-in."""
    items: list[tuple[float, str, Any]] = [
        frame(0, "garbage"),
        record(0.2, EdgeError(conn=CONN, at_ns=0, code="invalid_json")),
        # turn 1: plain, completed
        frame(1, start("hello")),
        turn(2, "t1", first=True),
        *legs(3, "t1", "hello", "no"),
        *tokens(20, "t1", ["Hello ", "world."]),
        chat_done(30, "t1", 3, "stop"),
        end(31, "t1", "completed"),
        # turn 2: tool yes, cancelled after two tokens
        frame(240, start("look at my screen")),
        turn(241, "t2"),
        *legs(242, "t2", "look at my screen", "yes"),
        *tokens(260, "t2", ["Once ", "upon "]),
        frame(270, json.dumps({"type": "cancel"})),
        (271, subjects.cancel(SID), Cancel(SID, "t2")),
        end(272, "t2", "cancelled"),
        *tokens(273, "t2", ["a "]),  # a straggler after the turn ended: never shown
        chat_done(275, "t2", 4, "cancelled"),
        # turn 3, barged in by turn 4
        frame(400, start("again")),
        turn(401, "t3"),
        *legs(402, "t3", "again", "no"),
        *tokens(420, "t3", ["One ", "two "]),
        frame(430, start("barge")),
        turn(431, "t4"),
        end(432, "t3", "cancelled"),
        *legs(433, "t4", "barge", "no"),
        *tokens(450, "t4", ["Sure."]),
        chat_done(460, "t4", 2, "stop"),
        end(461, "t4", "completed"),
    ]
    return items


def events(items: list[tuple[float, str, Any]] | None = None) -> list[Event]:
    """The script's events, decoded as the store decodes stream messages."""
    bus, records, codec = Codec(), RecordCodec(), EventCodec()
    out = []
    for at_ms, subject, struct in items or script():
        at_ns = T0_NS + round(at_ms * MS)
        if isinstance(struct, Record):
            data = records.encode(msgspec.structs.replace(struct, at_ns=at_ns))
        else:
            data = bus.encode(struct)
        decoded = codec.decode(subject, data, at_ns)
        assert decoded is not None and decoded[0] == SID
        out.append(decoded[1])
    return out


def session() -> Session:
    return Session.of(SID, events())


def session_of(items: list[tuple[float, str, Any]]) -> Session:
    return Session.of(SID, events(items))
