"""How the replay reads frames into turns; no sockets."""

from __future__ import annotations

from typing import Any

from clients.metrics import TimedFrame
from replay.driver import SessionRun, _Connection


def feed(*frames: dict[str, Any], starts: int = 1) -> SessionRun:
    run = SessionRun("orig", "fresh")
    connection = _Connection(None, run, None)  # type: ignore[arg-type]
    connection.start_times.extend([0.0] * starts)
    for at, data in enumerate(frames, start=1):
        connection.on_frame(TimedFrame(at=float(at), data=data))
    connection._flush_error()
    return run


ACK = {"type": "ack", "for": "start"}


def test_a_rejection_mid_turn_is_not_the_turn_failing() -> None:
    """An error followed by more of the turn answered a frame; the turn goes on."""
    run = feed(
        ACK,
        {"type": "toolcall", "status": "no"},
        {"type": "error", "error_code": "invalid_json"},
        {"type": "token", "text": "hi "},
        {"type": "final", "normalized_text": "hi"},
        {"type": "done", "usage": {"cached_tokens": 3}},
    )
    (turn,) = run.turns
    assert (turn.ended_by, turn.text, turn.cached_tokens) == ("done", "hi", 3)
    assert run.rejections == ["invalid_json"]


def test_error_then_done_with_its_code_fails_the_turn() -> None:
    """error + done(error_code) is the turn's failure, not a rejection."""
    run = feed(
        ACK,
        {"type": "error", "error_code": "actor_lost"},
        {"type": "done", "usage": {}, "error_code": "actor_lost"},
    )
    (turn,) = run.turns
    assert (turn.ended_by, turn.error_code) == ("error", "actor_lost")
    assert run.rejections == []


def test_barge_in_and_cancel() -> None:
    """A second ack ends the first turn as barged in; done cancelled ends the next."""
    run = feed(
        ACK,
        {"type": "token", "text": "a"},
        ACK,
        {"type": "token", "text": "b"},
        {"type": "done", "cancelled": True},
        starts=2,
    )
    assert [t.ended_by for t in run.turns] == ["barge_in", "cancel"]
    assert run.turns[0].interrupt_acked_at == 3.0


def test_a_refused_start_makes_no_turn() -> None:
    """An error while a start waits for its ack refuses that start."""
    run = feed({"type": "error", "error_code": "missing_field"})
    assert run.turns == [] and run.rejections == ["missing_field"]
