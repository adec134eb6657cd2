"""The shipped bus permissions, enforced by a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.errors import NoServersError

from bus import subjects
from bus.permissions import authorization_config, new_passwords
from launcher.nats import NatsServer
from tests.support.stack import make_config, read_turn, run_stack, start_message


@pytest.fixture
async def locked_bus(tmp_path: Path):  # type: ignore[no-untyped-def]
    passwords = new_passwords()
    async with NatsServer(
        tmp_path / "nats", extra_config=authorization_config(passwords)
    ) as server:
        yield server, passwords


async def test_anonymous_refused(locked_bus) -> None:  # type: ignore[no-untyped-def]
    """A connection without credentials is refused."""
    server, _ = locked_bus
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        await nats.connect(
            server.url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0
        )


async def test_edge_cannot_forge_tokens(locked_bus) -> None:  # type: ignore[no-untyped-def]
    """The edge's credentials cannot publish a token into a session's out stream."""
    server, passwords = locked_bus
    violations: list[str] = []
    violated = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))
        violated.set()

    edge = await nats.connect(
        server.url, user="edge", password=passwords["edge"], error_cb=on_error
    )
    actor = await nats.connect(server.url, user="actor", password=passwords["actor"])
    try:
        seen = await edge.subscribe(subjects.session_out("victim"))
        await edge.flush()  # the subscription is in place before anyone publishes
        await edge.publish(subjects.out("victim", "token"), b"forged")
        await actor.publish(subjects.out("victim", "token"), b"real")
        await edge.flush()
        await actor.flush()
        message = await seen.next_msg(timeout=2)
        assert message.data == b"real"  # the forged one never arrived
        with pytest.raises(nats.errors.TimeoutError):
            await seen.next_msg(timeout=0.3)
        async with asyncio.timeout(2):
            await violated.wait()
        assert "permissions violation" in violations[0].lower()
    finally:
        await edge.close()
        await actor.close()


async def test_turn_on_locked_bus(locked_bus) -> None:  # type: ignore[no-untyped-def]
    """A whole turn, session KV included, works with each process on its own user."""
    server, passwords = locked_bus
    config = make_config(server.url, bus={"user": "edge", "password": passwords["edge"]})
    actor_bus = make_config(server.url, bus={"user": "actor", "password": passwords["actor"]}).bus
    async with run_stack(config, actor_bus=actor_bus) as stack, stack.client() as ws:
        await ws.send(start_message("locked"))
        frames = await read_turn(ws)
        assert [f["type"] for f in frames][-2:] == ["final", "done"]
        assert stack.edge.state.sessions.__class__.__name__ == "KvSessionStore"
