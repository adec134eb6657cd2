"""Token coalescing and ordering in the per-client Outbox; no I/O."""

from __future__ import annotations

from edge import frames
from edge.outbox import Outbox


def test_consecutive_tokens_merge_into_one_frame() -> None:
    """Deltas pushed before the writer takes them become a single token frame."""
    outbox = Outbox()
    for text in ("Hel", "lo", ", ", "world"):
        outbox.push_token(text)
    assert len(outbox) == 1
    assert outbox.head_is_token()
    assert outbox.take() == [{"type": "token", "text": "Hello, world"}]
    assert len(outbox) == 0 and not outbox.head_is_token()


def test_taken_token_frame_is_not_extended() -> None:
    """A delta pushed after the writer took the frame starts a new frame."""
    outbox = Outbox()
    outbox.push_token("a")
    assert outbox.take() == [frames.token("a")]
    outbox.push_token("b")
    outbox.push_token("c")
    assert outbox.take() == [frames.token("bc")]


def test_non_token_frames_keep_their_order() -> None:
    """Tokens merge only with adjacent tokens; other frames stay where they were pushed."""
    outbox = Outbox()
    outbox.push(frames.toolcall("no", []))
    outbox.push_token("a")
    outbox.push_token("b")
    outbox.push(frames.pong())
    outbox.push_token("c")
    outbox.push(frames.final("abc"))
    outbox.push(frames.done(usage={}))
    assert len(outbox) == 6
    assert not outbox.head_is_token()
    assert outbox.take() == [
        {"type": "toolcall", "status": "no", "raw": []},
        {"type": "token", "text": "ab"},
        {"type": "pong"},
        {"type": "token", "text": "c"},
        {"type": "final", "normalized_text": "abc"},
        {"type": "done", "usage": {}},
    ]
    assert outbox.take() == []


def test_empty_token_is_dropped() -> None:
    """An empty delta adds no frame and does not split a merge."""
    outbox = Outbox()
    outbox.push_token("")
    assert len(outbox) == 0
    outbox.push_token("a")
    outbox.push_token("")
    outbox.push_token("b")
    assert outbox.take() == [frames.token("ab")]


def test_tokens_merge_while_the_writer_is_away() -> None:
    """Deltas that arrive between two takes merge, so the backlog stays one frame."""
    outbox = Outbox()
    outbox.push_token("first")
    assert outbox.take() == [frames.token("first")]
    for i in range(1000):
        outbox.push_token(str(i % 10))
    assert len(outbox) == 1
    (frame,) = outbox.take()
    assert len(frame["text"]) == 1000
