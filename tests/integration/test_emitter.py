"""The actor's per-turn emitter on a real nats-server: subjects, numbering, merging."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import msgspec
from nats.aio.client import Client

from actors.emitter import TurnEmitter
from bus import subjects
from bus.codec import Codec
from bus.events import Done, Token


class _Background:
    """Runs what the emitter spawns, and waits for it (the service's TaskGroup's part)."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))


async def _events(nats_client: Client, count: int, publish) -> list[tuple[str, object]]:  # type: ignore[no-untyped-def]
    """The events published, a Done's timing left out (its stamps are the clock's)."""
    codec = Codec()
    sub = await nats_client.subscribe(subjects.edge_outbox("edge-0"))
    await nats_client.flush()
    await publish()
    received = []
    for _ in range(count):
        msg = await sub.next_msg(timeout=2)
        event = codec.decode_outbound(msg.data)
        if isinstance(event, Done):
            assert event.timing is not None and event.timing.first_event > 0
            event = msgspec.structs.replace(event, timing=None)
        received.append((msg.subject, event))
    return received


async def test_deltas_of_one_pass_merge_into_the_next_token(nats_client: Client) -> None:
    """Deltas a turn makes while its last Token is still in this loop pass are merged
    into one Token when the pass ends; the first goes out at once; seqs stay dense and
    the leg's done comes after everything."""
    background = _Background()
    emit = TurnEmitter(
        nats_client,
        Codec(),
        "chat",
        "s1",
        "t1",
        edge_id="edge-0",
        actor_id="chat-0",
        spawn=background.spawn,
    )

    async def publish() -> None:
        for text in ("a", "b", "c", "d"):  # no suspension between them: one pass
            await emit.token(text)
        assert emit.token_events == 1  # only "a" so far; b, c, d wait for the pass to end
        await asyncio.sleep(0)  # one loop pass (not a timed wait): the pass ends
        await asyncio.gather(*background.tasks)
        await emit.token("e")  # sent or held, whichever: the done goes after it
        await emit.done("stop")

    events = await _events(nats_client, 4, publish)
    assert {s for s, _ in events} == {
        subjects.edge_out("edge-0", "s1", "chat-0", "token"),
        subjects.edge_out("edge-0", "s1", "chat-0", "done"),
    }
    assert [e for _, e in events] == [
        Token("s1", "t1", 1, "a"),
        Token("s1", "t1", 2, "bcd"),
        Token("s1", "t1", 3, "e"),
        Done("s1", "t1", 4, "chat", "stop"),
    ]
    assert (emit.tokens_sent, emit.token_events) == (5, 3)


async def test_deltas_in_separate_passes_are_not_held(nats_client: Client) -> None:
    """At low load (one delta per pass) every delta is its own Token, sent at once."""
    background = _Background()
    emit = TurnEmitter(
        nats_client,
        Codec(),
        "chat",
        "s1",
        "t1",
        edge_id="edge-0",
        actor_id="chat-0",
        spawn=background.spawn,
    )

    async def publish() -> None:
        for text in ("a", "b", "c"):
            await emit.token(text)
            assert emit.token_events == emit.tokens_sent  # nothing held back
            await asyncio.sleep(0)  # the engine's next step is a later pass
        assert not background.tasks
        await emit.done("stop")

    events = await _events(nats_client, 4, publish)
    assert [e.seq for _, e in events] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    assert [getattr(e, "text", None) for _, e in events] == ["a", "b", "c", None]
