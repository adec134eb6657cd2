"""The shipped bus permissions, one user per process id, enforced by a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoServersError

from bus import subjects
from bus.codec import Codec
from bus.events import Token
from bus.permissions import authorization_config, deployment_roles, new_passwords
from launcher.nats import NatsServer
from tests.support.stack import make_config, read_turn, recv_json, run_stack, start_message

EDGES = ("edge-a", "edge-b")
# run_stack names its actors tool-0 and chat-1; chat-9 is a bus user with no process.
ACTORS = ("tool-0", "chat-1", "chat-9")


@dataclass
class LockedBus:
    server: NatsServer
    passwords: dict[str, str]

    async def connect(self, user: str, **options: object) -> tuple[Client, list[str]]:
        """A connection as ``user``, and the permission errors the server sends it."""
        violations: list[str] = []

        async def on_error(exc: Exception) -> None:
            violations.append(str(exc).lower())

        client = await nats.connect(
            self.server.url,
            user=user,
            password=self.passwords[user],
            error_cb=on_error,
            **options,  # type: ignore[arg-type]
        )
        return client, violations


@pytest.fixture
async def locked_bus(tmp_path: Path) -> AsyncIterator[LockedBus]:
    roles = deployment_roles(EDGES, ACTORS)
    passwords = new_passwords(roles)
    async with NatsServer(
        tmp_path / "nats", extra_config=authorization_config(roles, passwords)
    ) as server:
        yield LockedBus(server, passwords)


async def _violation(violations: list[str], client: Client) -> str:
    """The next permission error the server reports on ``client``."""
    async with asyncio.timeout(2):
        while not violations:
            await client.flush()  # a round trip: any -ERR before the PONG has arrived
    return violations.pop(0)


async def test_anonymous_refused(locked_bus: LockedBus) -> None:
    """A connection without credentials is refused."""
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        await nats.connect(
            locked_bus.server.url,
            allow_reconnect=False,
            connect_timeout=2,
            max_reconnect_attempts=0,
        )


async def test_users_are_unique() -> None:
    """Two processes with one id cannot both get a bus user."""
    roles = deployment_roles(["same"], ["same"])
    with pytest.raises(ValueError, match="unique"):
        authorization_config(roles, new_passwords(roles))


async def test_edge_cannot_forge_tokens(locked_bus: LockedBus) -> None:
    """An edge's credentials cannot publish into any session's outbound stream."""
    edge, violations = await locked_bus.connect("edge-a")
    actor, _ = await locked_bus.connect("chat-1")
    try:
        seen = await edge.subscribe(subjects.edge_outbox("edge-a"))
        await edge.flush()  # the subscription is in place before anyone publishes
        subject = subjects.edge_out("edge-a", "victim", "chat-1", "token")
        await edge.publish(subject, b"forged")
        await actor.publish(subject, b"real")
        await actor.flush()
        assert "permissions violation" in await _violation(violations, edge)
        assert (await seen.next_msg(timeout=2)).data == b"real"  # the forged one never came
        with pytest.raises(nats.errors.TimeoutError):
            await seen.next_msg(timeout=0.3)
    finally:
        await edge.close()
        await actor.close()


async def test_actor_speaks_only_as_itself(locked_bus: LockedBus) -> None:
    """An actor may publish outbound subjects and heartbeats with its own id, on any
    edge, and nothing with another actor's id."""
    edge, _ = await locked_bus.connect("edge-a")
    actor, violations = await locked_bus.connect("chat-9")
    try:
        seen = await edge.subscribe(subjects.edge_outbox("edge-a"))
        await edge.flush()
        await actor.publish(subjects.edge_out("edge-a", "s1", "chat-1", "token"), b"as chat-1")
        assert "permissions violation" in await _violation(violations, actor)
        await actor.publish(subjects.heartbeat("chat", "chat-1"), b"as chat-1")
        assert "permissions violation" in await _violation(violations, actor)
        await actor.publish(subjects.edge_out("edge-a", "s1", "chat-9", "token"), b"as itself")
        await actor.publish(subjects.heartbeat("chat", "chat-9"), b"beat")
        await actor.flush()
        message = await seen.next_msg(timeout=2)
        assert message.data == b"as itself"
        assert subjects.parse_edge_out(message.subject) == ("s1", "chat-9", "token")
        assert not violations
    finally:
        await edge.close()
        await actor.close()


@pytest.mark.parametrize(
    "subject",
    [
        subjects.edge_outbox("edge-b"),
        "yap.edge.*.session.*.out.>",
        "yap.>",
        f"{subjects.inbox_prefix('edge-b')}.>",
        "_INBOX.>",
    ],
)
async def test_edge_reads_only_its_own_streams_and_replies(
    locked_bus: LockedBus, subject: str
) -> None:
    """An edge cannot subscribe to another edge's sessions or inbox, nor to wildcards
    that would cover them."""
    edge, violations = await locked_bus.connect(
        "edge-a", inbox_prefix=subjects.inbox_prefix("edge-a")
    )
    try:
        await edge.subscribe(subject)
        assert "permissions violation" in await _violation(violations, edge)
        await edge.subscribe(subjects.edge_outbox("edge-a"))
        await edge.subscribe(f"{subjects.inbox_prefix('edge-a')}.>")
        await edge.flush()
        assert not violations
    finally:
        await edge.close()


async def test_turn_on_locked_bus(locked_bus: LockedBus) -> None:
    """A whole turn, warm and session KV included, works with each process as its own user."""
    server, passwords = locked_bus.server, locked_bus.passwords
    config = make_config(server.url, bus={"user": "edge-a", "password": passwords["edge-a"]})
    actors = {
        actor_id: make_config(
            server.url, bus={"user": actor_id, "password": passwords[actor_id]}
        ).bus
        for actor_id in ("tool-0", "chat-1")
    }
    async with (
        run_stack(config, actor_buses=actors, edge_id="edge-a") as stack,
        stack.client() as ws,
    ):
        await ws.send(start_message("locked"))
        frames = await read_turn(ws)
        assert [f["type"] for f in frames][-2:] == ["final", "done"]
        await ws.send(json.dumps({"type": "warm_history", "history_text": "user: hi"}))
        assert (await recv_json(ws))["type"] == "warmed"
        assert type(stack.edge.sessions).__name__ == "KvSessionStore"


async def test_another_actors_forged_token_never_reaches_the_client(
    locked_bus: LockedBus,
) -> None:
    """A token from another actor's credentials, for the live turn's own session and turn
    id (with a high seq), is dropped: the client never sees it and the real stream goes
    on to its done."""
    server, passwords = locked_bus.server, locked_bus.passwords
    config = make_config(
        server.url,
        bus={"user": "edge-a", "password": passwords["edge-a"]},
        chat={"bench_tokens_per_s": 400},
    )
    actors = {
        actor_id: make_config(
            server.url, bus={"user": actor_id, "password": passwords[actor_id]}
        ).bus
        for actor_id in ("tool-0", "chat-1")
    }
    intruder, violations = await locked_bus.connect("chat-9")
    codec = Codec()
    try:
        async with (
            run_stack(config, actor_buses=actors, edge_id="edge-a") as stack,
            stack.client() as ws,
        ):
            await ws.send(start_message("victim", "mine [[long]] story"))
            frames = [await recv_json(ws)]
            turn_id = frames[0]["turn_id"]
            while frames[-1]["type"] != "token":
                frames.append(await recv_json(ws))
            forged = Token("victim", turn_id, 999, "FORGED ")
            subject = subjects.edge_out("edge-a", "victim", "chat-9", "token")
            await intruder.publish(subject, codec.encode(forged))
            await intruder.flush()
            frames += await read_turn(ws, within=5.0)
            await stack.wait_idle()
        assert not violations  # it may publish as itself; the edge ignores it
        text = "".join(f["text"] for f in frames if f["type"] == "token")
        assert "FORGED" not in text
        assert frames[-1]["type"] == "done" and "error_code" not in frames[-1]
        assert len(text.split()) == config.chat.max_out
    finally:
        await intruder.close()
