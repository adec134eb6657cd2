"""Token coalescing and ordering in the per-client Outbox; no I/O."""

from __future__ import annotations

import asyncio

from edge import frames
from edge.outbox import Outbox


async def drain(outbox: Outbox) -> list[frames.Frame]:
    outbox.close()
    out: list[frames.Frame] = []
    while (frame := await outbox.get()) is not None:
        out.append(frame)
    return out


async def test_consecutive_tokens_merge_into_one_frame() -> None:
    """Deltas pushed before the writer takes them become a single token frame."""
    outbox = Outbox()
    for text in ("Hel", "lo", ", ", "world"):
        outbox.push_token(text)
    assert len(outbox) == 1
    assert await outbox.get() == {"type": "token", "text": "Hello, world"}
    assert len(outbox) == 0


async def test_taken_token_frame_is_not_extended() -> None:
    """A delta pushed after the writer took the frame starts a new frame."""
    outbox = Outbox()
    outbox.push_token("a")
    assert await outbox.get() == frames.token("a")
    outbox.push_token("b")
    outbox.push_token("c")
    assert await outbox.get() == frames.token("bc")


async def test_non_token_frames_keep_their_order() -> None:
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
    assert await drain(outbox) == [
        {"type": "toolcall", "status": "no", "raw": []},
        {"type": "token", "text": "ab"},
        {"type": "pong"},
        {"type": "token", "text": "c"},
        {"type": "final", "normalized_text": "abc"},
        {"type": "done", "usage": {}},
    ]


async def test_empty_token_is_dropped() -> None:
    """An empty delta adds no frame and does not split a merge."""
    outbox = Outbox()
    outbox.push_token("")
    assert len(outbox) == 0
    outbox.push_token("a")
    outbox.push_token("")
    outbox.push_token("b")
    assert await drain(outbox) == [frames.token("ab")]


async def test_close_drains_then_returns_none() -> None:
    """After close(), get() returns what is left, then None every time."""
    outbox = Outbox()
    outbox.push(frames.pong())
    outbox.push_token("x")
    outbox.close()
    assert await outbox.get() == frames.pong()
    assert await outbox.get() == frames.token("x")
    assert await outbox.get() is None
    assert await outbox.get() is None


async def test_close_wakes_a_waiting_reader() -> None:
    """A reader blocked on an empty outbox gets None when it is closed."""
    outbox = Outbox()
    reader = asyncio.create_task(outbox.get())
    await asyncio.sleep(0)  # one loop step (not a timed wait): the reader blocks
    assert not reader.done()
    outbox.close()
    assert await asyncio.wait_for(reader, 1) is None


async def test_push_wakes_a_waiting_reader() -> None:
    """A reader blocked on an empty outbox gets the next pushed frame."""
    outbox = Outbox()
    reader = asyncio.create_task(outbox.get())
    await asyncio.sleep(0)  # one loop step (not a timed wait): the reader blocks
    assert not reader.done()
    outbox.push_token("hi")
    assert await asyncio.wait_for(reader, 1) == frames.token("hi")


async def test_tokens_merge_while_reader_is_away() -> None:
    """Deltas that arrive between two reads merge, so the backlog stays one frame."""
    outbox = Outbox()
    outbox.push_token("first")
    assert await outbox.get() == frames.token("first")
    for i in range(1000):
        outbox.push_token(str(i % 10))
    assert len(outbox) == 1
    frame = await outbox.get()
    assert frame is not None and len(frame["text"]) == 1000
