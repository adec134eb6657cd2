"""Waiting for the recording stream to hold what a test just did."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from replay.errors import SessionNotFound
from replay.events import Session
from replay.store import RecordingStore

__all__ = ["recorded_session"]


async def recorded_session(
    nc: Client, session_id: str, turns: int, within: float = 10.0
) -> Session:
    """The session once the stream holds the end of ``turns`` turns.

    The stream stores what the server received a moment later and sends no acks
    (it is no_ack), so its content is the only sign: polled, bounded.
    """
    store = RecordingStore(nc)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            session = await store.session(session_id)
        except SessionNotFound:
            session = Session(session_id, ())
        ended = sum(1 for e in session.events if e.direction == "edge" and e.kind == "turn_end")
        if ended >= turns:
            return session
        if loop.time() >= deadline:
            raise AssertionError(f"{session_id}: {ended} of {turns} turns recorded in {within} s")
        await asyncio.sleep(0.05)
