"""Turn metrics and percentiles from synthetic timelines; no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from clients.metrics import (
    TimedFrame,
    has_complete_sentence,
    has_words,
    summarize,
    turn_metrics,
)


def _timeline(*frames: tuple[float, dict[str, Any]]) -> list[TimedFrame]:
    return [TimedFrame(at=at, data=data) for at, data in frames]


def _token(text: str) -> dict[str, Any]:
    return {"type": "token", "text": text}


FULL_TURN = _timeline(
    (10.010, {"type": "ack", "for": "start"}),
    (10.050, {"type": "toolcall", "status": "no", "raw": "[]"}),
    (10.100, _token("Hi ")),
    (10.120, _token("there, ")),
    (10.140, _token("friend. ")),
    (10.160, _token("Bye")),
    (10.170, {"type": "final", "normalized_text": "Hi there, friend. Bye!"}),
    (10.200, {"type": "done", "usage": {}}),
)


def test_full_turn_metrics() -> None:
    """Every metric is measured from the send time to the frame that completes it."""
    metrics = turn_metrics(10.0, FULL_TURN)
    assert metrics.ttfb_toolcall_ms == pytest.approx(50.0)
    assert metrics.ttfb_ms == pytest.approx(100.0)
    assert metrics.ttfb_chat_ms == metrics.ttfb_ms
    assert metrics.time_to_first_3_words_ms == pytest.approx(140.0)
    assert metrics.time_to_first_complete_sentence_ms == pytest.approx(140.0)
    assert metrics.total_ms == pytest.approx(200.0)
    assert metrics.stream_ms == pytest.approx(100.0)
    assert metrics.chunks == 4
    assert metrics.chars == len("Hi there, friend. Bye!")


def test_streamed_text_counts_without_final() -> None:
    """Without a normalized final text, chars counts the concatenated tokens."""
    frames = _timeline((1.1, _token("ab")), (1.2, _token("cd")), (1.3, {"type": "done"}))
    metrics = turn_metrics(1.0, frames)
    assert metrics.chars == 4
    assert metrics.time_to_first_3_words_ms is None
    assert metrics.time_to_first_complete_sentence_ms is None


def test_tool_only_turn_has_no_chat_metrics() -> None:
    """A turn with a toolcall and no tokens has toolcall and total times only."""
    frames = _timeline(
        (0.02, {"type": "toolcall", "status": "yes", "raw": "[...]"}),
        (0.03, {"type": "done", "usage": {}}),
    )
    metrics = turn_metrics(0.0, frames)
    assert metrics.ttfb_toolcall_ms == pytest.approx(20.0)
    assert metrics.ttfb_ms is None and metrics.stream_ms is None
    assert metrics.total_ms == pytest.approx(30.0)
    assert metrics.chunks == 0


def test_unfinished_turn_has_no_total() -> None:
    """Without a done frame the turn has no total or stream time."""
    metrics = turn_metrics(0.0, _timeline((0.5, _token("hello "))))
    assert metrics.total_ms is None and metrics.stream_ms is None
    assert metrics.ttfb_ms == pytest.approx(500.0)


def test_frames_after_done_are_ignored() -> None:
    """Frames after the first done belong to no turn."""
    frames = _timeline((0.1, {"type": "done"}), (0.2, _token("late ")), (0.3, {"type": "done"}))
    metrics = turn_metrics(0.0, frames)
    assert metrics.chunks == 0
    assert metrics.total_ms == pytest.approx(100.0)


def test_sentence_end_split_across_tokens() -> None:
    """A period at the end of the text so far completes a sentence at once."""
    frames = _timeline((0.1, _token("Sure")), (0.2, _token(".")), (0.3, _token(" Next")))
    assert turn_metrics(0.0, frames).time_to_first_complete_sentence_ms == pytest.approx(200.0)


def test_as_dict_rounds_times() -> None:
    """as_dict rounds times and keeps counts and missing values as they are."""
    frames = _timeline((0.0123456, _token("x")), (0.02, {"type": "done"}))
    data = turn_metrics(0.0, frames).as_dict()
    assert data["ttfb_ms"] == 12.35
    assert data["chunks"] == 1
    assert data["ttfb_toolcall_ms"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello.", True),
        ("Hello. World", True),
        ('She said "hi!" then', True),
        ("(really?) yes", True),
        ("3.5 apples", False),
        ("no end yet", False),
        ("example.com is", False),
    ],
)
def test_complete_sentence(text: str, expected: bool) -> None:
    """A sentence ends at . ! or ? (maybe closed by quotes) before space or end."""
    assert has_complete_sentence(text) is expected


def test_has_words() -> None:
    """Words are whitespace-separated, punctuation included."""
    assert has_words(" one, two  three ", 3)
    assert not has_words("one two", 3)


def test_summarize() -> None:
    """A summary has count, percentiles, mean and range; none for no values."""
    summary = summarize([4.0, 1.0, 3.0, 2.0])
    assert summary is not None
    assert (summary.count, summary.p50, summary.p95, summary.p99) == (4, 2.0, 4.0, 4.0)
    assert (summary.mean, summary.min, summary.max) == (2.5, 1.0, 4.0)
    assert summarize([]) is None
