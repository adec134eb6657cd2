"""Events in plain form and back to the bytes they were recorded as; no I/O."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from bus import subjects
from bus.codec import Codec
from bus.events import (
    Cancel,
    ChatStart,
    Done,
    Error,
    Persona,
    Token,
    ToolCall,
    ToolCallSpec,
    ToolStart,
    Warm,
    Warmed,
)
from replay.events import EventCodec, EventError, from_plain, to_plain
from tests.unit.replay import recorded

EVENTS = [
    ToolStart("s", "t", "hi", "User: x"),
    ChatStart("s", "t", "hi", Persona(assistant_gender="man", persona_text="p", now="n"), "", 5),
    Warm("s", "w", "persona", Persona()),
    Cancel("s", "t", "barge_in"),
    ToolCall("s", "t", 1, "yes", "[]", (ToolCallSpec("take_screenshot", {"a": 1}),)),
    Token("s", "t", 2, "word "),
    Done("s", "t", 3, "chat", "stop", 10, 20, 5),
    Error("s", "t", 4, "chat", "engine_dead", "gone"),
    Warmed("s", "w", "history", 12, 3, "chat-0"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_plain_round_trip(event: msgspec.Struct) -> None:
    """Every bus event goes to a dict of its fields and back unchanged."""
    plain = to_plain(event)
    assert isinstance(plain, dict) and "session_id" in plain
    assert from_plain(type(event), plain) == event


def test_from_plain_fills_defaults_and_names_missing_fields() -> None:
    """Missing optional fields take their defaults; a missing required one is an EventError."""
    assert from_plain(ToolStart, {"session_id": "s", "turn_id": "t", "user_utterance": "u"}) == (
        ToolStart("s", "t", "u")
    )
    with pytest.raises(EventError, match="user_utterance"):
        from_plain(ToolStart, {"session_id": "s", "turn_id": "t"})
    with pytest.raises(EventError):
        from_plain(Token, {"session_id": "s", "turn_id": "t", "seq": "one", "text": "x"})


def test_codec_round_trips_every_recorded_message() -> None:
    """Each event of a session encodes back to a subject and payload that decode to it."""
    codec = EventCodec()
    for event in recorded.events():
        subject, payload = codec.encode(recorded.SID, event)
        again = codec.decode(subject, payload, event.at_ns)
        assert again is not None
        assert again[1].payload == event.payload and again[1].kind == event.kind


def test_codec_renames_the_session() -> None:
    """Encoding under another session id moves the subject and the event's own id."""
    codec = EventCodec()
    token = next(e for e in recorded.events() if e.kind == "token")
    subject, payload = codec.encode("other", token)
    assert "other" in subject
    assert Codec().decode_outbound(payload).session_id == "other"


def test_codec_refuses_what_is_no_session_event() -> None:
    """Heartbeat subjects are not a session's; junk payloads are EventErrors."""
    codec = EventCodec()
    assert codec.decode("yap.actor.tool.t.heartbeat", b"", 0) is None
    with pytest.raises(EventError):
        codec.decode(subjects.edge_out("edge-0", "s", "chat-0", "token"), b"\xc1junk", 0)


def test_codec_rebuilds_the_recorded_subjects() -> None:
    """Import publishes each event on the subject it was recorded on: the outbound ones
    with the edge and the sending actor, a start with its addressed actor."""
    codec = EventCodec()
    script = recorded.script()
    for (_, subject, _), event in zip(script, recorded.events(script), strict=True):
        assert codec.encode(recorded.SID, event)[0] == subject
    token = next(e for e in recorded.events() if e.kind == "token")
    assert (token.edge_id, token.actor_id) == (recorded.EDGE, "chat-0")
    with pytest.raises(EventError, match="needs its edge and actor"):
        codec.encode(recorded.SID, dataclasses.replace(token, edge_id=None))
    with pytest.raises(EventError, match="token event"):
        codec.encode(recorded.SID, dataclasses.replace(token, edge_id="bad.edge"))
