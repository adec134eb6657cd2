"""The client side of the protocol: the ack is the turn boundary."""

from __future__ import annotations

import pytest

pytest.importorskip("pipecat")

from pipecat.utils.errors import ErrorCategory

from integrations.pipecat.codes import category_for
from integrations.pipecat.protocol import (
    Acked,
    Refused,
    ReplyReader,
    TextDelta,
    ToolCallRequest,
    ToolDecision,
    TurnDone,
    TurnFailed,
    TurnReader,
    tool_call_id,
    tool_calls,
)

ACK = {"type": "ack", "for": "start", "turn_id": "t2", "models": {"chat": "m", "tool": "h"}}


def test_frames_before_the_ack_are_an_older_turns() -> None:
    """Tokens, dones, errors that only end a turn, and other replies before the ack
    are dropped; the ack opens the turn."""
    reader = TurnReader()
    stale = [
        {"type": "token", "text": "old"},
        {"type": "error", "error_code": "actor_lost", "message": "gone"},
        {"type": "done", "usage": {}, "error_code": "actor_lost"},
        {"type": "done", "cancelled": True},
        {"type": "ack", "for": "set_persona", "changed": {}},
        {"type": "warmed", "segment": "persona", "bytes": 3},
        {"type": "pong"},
    ]
    assert [reader.feed(frame) for frame in stale] == [None] * len(stale)
    assert reader.feed(ACK) == Acked(turn_id="t2", chat_model="m")
    assert reader.acked and not reader.finished


def test_a_turns_frames_after_the_ack() -> None:
    """Decision, text, failure and done come out in order; one decision only."""
    reader = TurnReader()
    reader.feed(ACK)
    raw = [{"name": "take_screenshot", "arguments": {}}]
    assert reader.feed({"type": "toolcall", "status": "yes", "raw": raw}) == ToolDecision(
        "yes", raw
    )
    assert reader.feed({"type": "toolcall", "status": "no", "raw": []}) is None
    assert reader.feed({"type": "token", "text": "Hi "}) == TextDelta("Hi ")
    assert reader.feed({"type": "token", "text": ""}) is None
    assert reader.feed({"type": "final", "normalized_text": "Hi"}) is None
    assert reader.feed({"type": "error", "error_code": "turn_timeout", "message": "slow"}) == (
        TurnFailed("turn_timeout", "slow")
    )
    done = reader.feed(
        {"type": "done", "usage": {"prompt_tokens": 3}, "error_code": "turn_timeout"}
    )
    assert done == TurnDone(usage={"prompt_tokens": 3}, error_code="turn_timeout")
    assert reader.finished
    assert reader.feed({"type": "token", "text": "late"}) is None


def test_an_error_before_the_ack_refuses_the_start() -> None:
    """A refusal (bad field, rate limit, shutdown) ends the turn without an ack."""
    reader = TurnReader()
    frame = {"type": "error", "error_code": "field_too_long", "message": "too long"}
    assert reader.feed(frame) == Refused("field_too_long", "too long")
    assert reader.finished
    assert TurnReader().feed({"type": "error"}) == Refused("unknown_error", "")


def test_reply_reader_waits_for_its_reply() -> None:
    """Other frames are skipped; on a used socket turn-ending errors are stale."""
    reader = ReplyReader("ack", ack_for="set_persona")
    assert reader.feed(ACK) is None
    assert reader.feed({"type": "error", "error_code": "actor_lost"}) is None
    refused = reader.feed({"type": "error", "error_code": "invalid_field", "message": "style"})
    assert refused == Refused("invalid_field", "style")
    reply = {"type": "ack", "for": "set_persona", "changed": {}}
    assert reader.feed(reply) == reply
    fresh = ReplyReader("warmed", any_error=True)
    assert fresh.feed({"type": "error", "error_code": "turn_timeout"}) == Refused(
        "turn_timeout", ""
    )


def test_tool_calls_from_raw() -> None:
    """Hammer's calls keep their names and arguments; an unreadable yes is a screenshot."""
    raw = [{"name": "take_screenshot", "arguments": {"region": "all"}}, {"name": ""}, 3]
    assert tool_calls(raw, "take_screenshot") == [
        ToolCallRequest("take_screenshot", {"region": "all"})
    ]
    assert tool_calls('[{"name": "take_scr', "take_screenshot") == [
        ToolCallRequest("take_screenshot", {})
    ]
    assert tool_call_id("abc") == "yap_abc" and tool_call_id("abc", 1) == "yap_abc_1"


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("authentication_failed", ErrorCategory.AUTHENTICATION),
        ("rate_limited", ErrorCategory.RATE_LIMIT),
        ("invalid_field", ErrorCategory.APPLICATION),
        ("connection_lost", ErrorCategory.CONNECTIVITY),
        ("actor_lost", ErrorCategory.SERVER),
    ],
)
def test_only_a_refused_key_is_permanent(code: str, category: ErrorCategory) -> None:
    """Pipecat takes a service with a permanent error out of use: only a bad key is."""
    assert category_for(code) is category
    assert category.is_permanent == (code == "authentication_failed")
