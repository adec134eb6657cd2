"""Admission by actor capacity and session affinity, through the real edge, bus and
actor services with fake engines."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient
from prometheus_client import generate_latest
from websockets.asyncio.client import ClientConnection

from bus import subjects
from bus.codec import Codec
from bus.events import Accepted, Cancel, ChatStart, Done, Heartbeat, Persona
from edge.registry import ActorRegistry
from tests.support.stack import Stack, make_config, read_turn, recv_json, run_stack, start_message

FAKE_EDGE = "edge-test"


def _types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


def _reply_of(frames: list[dict[str, Any]], tag: str) -> bool:
    """Whether the turn's tokens are the fake reply to an utterance tagged ``tag``."""
    words = "".join(f["text"] for f in frames if f["type"] == "token").split()
    return words[-1:] == ["end."] and all(w.startswith(tag) for w in words[:-1])


def _config(
    nats_url: str,
    *,
    edge: dict[str, Any] | None = None,
    chat: dict[str, Any] | None = None,
    **actor: Any,
) -> Any:
    """Chat only, one turn per actor, a slow long reply (``[[long]]``: 1 s)."""
    return make_config(
        nats_url,
        models={"deploy": "chat"},
        chat={"bench_tokens_per_s": 50, "max_out": 50, **(chat or {})},
        actor={"max_running": 1, **actor},
        edge=edge or {},
    )


async def _until_first_token(ws: ClientConnection) -> dict[str, Any]:
    """Read a turn's frames up to its first token; its ack."""
    ack = await recv_json(ws)
    assert ack["type"] == "ack", ack
    while (await recv_json(ws))["type"] != "token":
        pass
    return ack


async def _queued(stack: Stack, count: int = 1) -> None:
    """Wait until ``count`` chat legs wait for room at the edge."""
    admission = stack.edge.context.legs.admission
    async with asyncio.timeout(5.0):
        while admission.waiting("chat") < count:
            admission.joined.clear()
            await admission.joined.wait()


async def _alpha_runs_bravo_waits(stack: Stack, a: ClientConnection, b: ClientConnection) -> None:
    """alpha's long turn fills the only chat actor; bravo's turn is acked and waits."""
    await a.send(start_message("sa", "alpha [[long]]"))
    await _until_first_token(a)
    await b.send(start_message("sb", "bravo"))
    assert (await recv_json(b))["type"] == "ack"
    await _queued(stack)


async def _heard(registry: ActorRegistry, ok: Callable[[ActorRegistry], bool]) -> None:
    """Wait for heartbeats until ``ok`` holds."""
    async with asyncio.timeout(5.0):
        while not ok(registry):
            registry.heard.clear()
            await registry.heard.wait()


def _turns_of(registry: ActorRegistry, actor_id: str) -> int | None:
    for status in registry.snapshot():
        if status.heartbeat.actor_id == actor_id:
            return status.heartbeat.turns
    return None


@dataclass
class Filler:
    """A long turn of another edge that fills ``actor_id``'s one place."""

    nats_client: NatsClient
    actor_id: str
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    codec: Codec = field(default_factory=Codec)

    async def __aenter__(self) -> Filler:
        # Subscribed first: the filler's Done, whenever it comes, is not missed.
        self._outbox = await self.nats_client.subscribe(subjects.edge_outbox(FAKE_EDGE))
        start = ChatStart(
            "other",
            self.turn_id,
            user_utterance="filler [[long]]",
            persona=Persona(),
            edge_id=FAKE_EDGE,
        )
        reply = await self.nats_client.request(
            subjects.chat_start_at("other", self.actor_id), self.codec.encode(start), timeout=2.0
        )
        assert isinstance(self.codec.decode_reply(reply.data), Accepted)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._outbox.unsubscribe()

    async def free(self) -> None:
        """Cancel the filler and wait for its Done: the actor has room again."""
        cancel = Cancel("other", self.turn_id)
        await self.nats_client.publish(subjects.cancel("other"), self.codec.encode(cancel))
        async with asyncio.timeout(5.0):
            while True:
                msg = await self._outbox.next_msg(timeout=5.0)
                event = self.codec.decode_outbound(msg.data)
                if isinstance(event, Done) and event.turn_id == self.turn_id:
                    return


async def test_heartbeats_carry_turns_and_limit(nats_server) -> None:
    """Every actor's heartbeat says its max_running and how many turns it holds."""
    config = make_config(nats_server.url, actor={"max_running": 3})
    async with run_stack(config) as stack:
        beats = [s.heartbeat for s in stack.edge.registry.snapshot()]
    assert sorted(b.kind for b in beats) == ["chat", "tool"]
    assert all(b.limit == 3 and b.turns == 0 for b in beats)


async def test_a_turn_waits_for_a_full_actor_and_is_served_once_it_frees(nats_server) -> None:
    """With the only chat actor full, a second session's turn waits at the edge (no
    actor_busy) and streams once the first turn ends."""
    config = _config(nats_server.url)
    async with run_stack(config) as stack, stack.client() as a, stack.client() as b:
        await _alpha_runs_bravo_waits(stack, a, b)
        exposed = generate_latest(stack.edge.context.metrics.registry).decode()
        assert 'yap_edge_admission_waiting{kind="chat"} 1.0' in exposed
        first = await read_turn(a)
        assert _types(first)[-2:] == ["final", "done"]
        second = await read_turn(b)
        assert _types(second)[-2:] == ["final", "done"], second
        assert "error" not in _types(second)
        assert _reply_of(second, "bravo")
        prompts = stack.engines("chat")[0].prompts
        assert [p.rsplit("\n", 3)[-3].split()[0] for p in prompts] == ["alpha", "bravo"]
        assert stack.edge.context.legs.admission.waiting("chat") == 0


async def test_the_queue_bound_and_deadline_answer_server_at_capacity(nats_server) -> None:
    """Past the queue's bound a turn gets server_at_capacity and done at once; a queued
    turn gets them at its deadline; neither hangs, and neither ever ran."""
    # alpha's reply (8 s) outlasts the deadline, so room never appears in time.
    config = _config(
        nats_server.url,
        edge={"admission_queue": 1, "admission_timeout_s": 2.0},
        chat={"max_out": 400},
    )
    async with (
        run_stack(config) as stack,
        stack.client() as a,
        stack.client() as b,
        stack.client() as c,
    ):
        await a.send(start_message("sa", "alpha [[long]]"))
        await _until_first_token(a)
        queued_at = time.monotonic()
        await b.send(start_message("sb", "bravo"))
        await _queued(stack)
        await c.send(start_message("sc", "charlie"))
        over = await read_turn(c, within=2.0)
        # Refused at once, not at a deadline: bravo is still waiting for its own.
        assert stack.edge.context.legs.admission.waiting("chat") == 1
        late = await read_turn(b, within=5.0)
        assert time.monotonic() - queued_at >= 2.0  # not refused before its deadline
        for frames in (over, late):
            assert _types(frames) == ["ack", "error", "done"], frames
            assert frames[1]["error_code"] == frames[2]["error_code"] == "server_at_capacity"
        await a.send('{"type": "cancel"}')
        await read_turn(a)
        await stack.wait_idle()
        assert len(stack.engines("chat")[0].prompts) == 1  # only alpha reached the actor
        assert stack.edge.context.legs.admission.waiting("chat") == 0


async def test_cancelling_a_queued_turn_takes_it_out_of_the_queue(nats_server) -> None:
    """A cancel of a waiting turn answers done(cancelled), and when room appears the
    turn is not started: it left the queue."""
    config = _config(nats_server.url, edge={"admission_timeout_s": 30.0})
    async with run_stack(config) as stack, stack.client() as a, stack.client() as b:
        await _alpha_runs_bravo_waits(stack, a, b)
        await b.send('{"type": "cancel"}')
        assert await recv_json(b) == {"type": "done", "cancelled": True}
        await a.send('{"type": "cancel"}')  # room: a leg still queued would start now
        await read_turn(a)
        await stack.wait_idle()
        await b.send(start_message("sb", "delta"))  # b's next turn runs normally
        frames = await read_turn(b)
        assert _types(frames)[-2:] == ["final", "done"]
        prompts = stack.engines("chat")[0].prompts
        assert [p.rsplit("\n", 3)[-3].split()[0] for p in prompts] == ["alpha", "delta"]
        assert stack.edge.context.legs.admission.waiting("chat") == 0


async def test_a_busy_refusal_behind_a_stale_heartbeat_waits_for_room(
    nats_server, nats_client: NatsClient
) -> None:
    """An actor that refuses a turn as busy (its last heartbeat said it had room) is
    believed: the turn waits, within the deadline (then server_at_capacity), and is
    served as soon as a heartbeat shows room; the client never sees actor_busy."""
    config = _config(
        nats_server.url,
        edge={"admission_timeout_s": 0.5},
        heartbeat_interval_s=5.0,  # the edge's view stays stale for the whole test
    )
    async with run_stack(config) as stack, stack.client() as ws:
        chat = stack.actors[0]
        async with Filler(nats_client, "chat-0") as filler:
            await ws.send(start_message("s1", "bravo"))
            frames = await read_turn(ws, within=3.0)
            assert _types(frames) == ["ack", "error", "done"], frames
            assert frames[-1]["error_code"] == "server_at_capacity"
            await filler.free()
        await ws.send(start_message("s1", "charlie"))
        assert (await recv_json(ws))["type"] == "ack"
        await _queued(stack)  # the refusal holds until the actor's next heartbeat
        beat = Heartbeat(
            actor_id="chat-0",
            kind="chat",
            interval_s=5.0,
            instance=chat.instance,
            limit=1,
            turns=0,
        )
        await nats_client.publish(subjects.heartbeat("chat", "chat-0"), Codec().encode(beat))
        frames = await read_turn(ws)
        assert _types(frames)[-2:] == ["final", "done"], frames
        assert _reply_of(frames, "charlie")


async def test_a_full_home_moves_the_session_to_the_other_replica(
    nats_server, nats_client: NatsClient
) -> None:
    """With two chat replicas, a session whose home is full goes to the other one, which
    is its home from then on, even once the first has room again."""
    config = _config(nats_server.url, chat={"max_out": 100})  # the filler: 2 s
    async with run_stack(config, chats=2) as stack, stack.client() as ws:
        registry = stack.edge.registry
        engines = dict(zip(("chat-0", "chat-1"), stack.engines("chat"), strict=True))
        await ws.send(start_message("s1", "first"))
        await read_turn(ws)
        home = next(a for a, e in engines.items() if e.prompts)
        other = next(a for a in engines if a != home)
        async with Filler(nats_client, home) as filler:
            await _heard(registry, lambda r: _turns_of(r, home) == 1)
            await ws.send(start_message("s1", "second"))
            frames = await read_turn(ws)
            assert _types(frames)[-2:] == ["final", "done"] and "error" not in _types(frames)
            assert len(engines[other].prompts) == 1
            await filler.free()
        await _heard(registry, lambda r: _turns_of(r, home) == 0)
        await ws.send(start_message("s1", "third"))
        await read_turn(ws)
        assert len(engines[other].prompts) == 2
        assert len(engines[home].prompts) == 2  # the first turn and the filler


async def test_queue_routing_ignores_the_home(nats_server) -> None:
    """With chat_routing = "queue" the queue group spreads one session's turns over
    both replicas. It picks at random, so turns go on until both served one: 40
    turns on one replica alone would be a 1 in 10^11 chance, not a flake."""
    config = make_config(nats_server.url, models={"deploy": "chat"}, edge={"chat_routing": "queue"})
    async with run_stack(config, chats=2) as stack, stack.client() as ws:
        for n in range(40):
            await ws.send(start_message("s1", f"turn{n}"))
            frames = await read_turn(ws)
            assert _types(frames)[-2:] == ["final", "done"]
            served = [len(e.prompts) for e in stack.engines("chat")]
            if min(served) > 0:
                break
    assert sum(served) == n + 1 and min(served) > 0
