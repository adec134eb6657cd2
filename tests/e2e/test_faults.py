"""Faults with real processes: an actor dies mid-turn."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from launcher.nats import NatsServer
from tests.support.stack import read_turn, recv_json, start_message
from tests.support.system import run_system


async def test_chat_actor_killed_mid_turn(tmp_path: Path, model_cache: Path) -> None:
    """SIGKILL of the chat actor mid-stream gives the client actor_lost and done within
    2 s, and the next turn is served by the surviving replica."""
    async with (
        NatsServer(tmp_path / "nats") as nats_server,
        run_system(
            tmp_path,
            nats_server.url,
            model_cache,
            chats=2,
            long_chat=True,
        ) as system,
        connect(system.url) as ws,
    ):
        session_id = uuid.uuid4().hex
        await ws.send(start_message(session_id, "tell me everything"))
        while (frame := await recv_json(ws, 60))["type"] != "token":
            assert frame["type"] in ("ack", "toolcall")
        # Which replica took the turn: the one with a running request.
        loads = {}
        async with asyncio.timeout(5):
            while not any(loads.values()):
                loads = await system.actor_load_snapshot()
        busy = next(actor for actor, running in loads.items() if running)
        victim = next(
            name
            for name in system.processes
            if name.startswith("chat") and busy in system.log(name)
        )
        killed_at = time.monotonic()
        await system.kill(victim)
        while (frame := await recv_json(ws, 5))["type"] == "token":
            pass
        assert frame["type"] == "error" and frame["error_code"] == "actor_lost"
        assert (await recv_json(ws, 5))["type"] == "done"
        assert time.monotonic() - killed_at < 2.0

        await ws.send(start_message(session_id, "are you back?"))
        frames = await read_turn(ws, within=60)
        assert frames[-1]["type"] == "done" and "usage" in frames[-1]
        assert not any((await system.actor_load()).values())


async def test_sigterm_chat_actor_drains(tmp_path: Path, model_cache: Path) -> None:
    """SIGTERM on a busy chat actor ends its turn with a done frame and the process
    exits cleanly within its drain bound."""
    async with (
        NatsServer(tmp_path / "nats") as nats_server,
        run_system(
            tmp_path,
            nats_server.url,
            model_cache,
            long_chat=True,
        ) as system,
        connect(system.url) as ws,
    ):
        await ws.send(start_message(uuid.uuid4().hex, "talk for a long time"))
        while (await recv_json(ws, 60))["type"] != "token":
            pass
        stopping = asyncio.create_task(system.processes["chat1"].stop())
        while (frame := await recv_json(ws, 10))["type"] == "token":
            pass
        frames = [frame] if frame["type"] == "done" else [frame, await recv_json(ws, 5)]
        assert frames[-1]["type"] == "done"
        if len(frames) == 2:  # cut short by the drain bound: said so, not silence
            assert frames[0]["type"] in ("error", "final")
        async with asyncio.timeout(15):
            code = await stopping
        assert code == 0
        assert "chat actor stopped" in system.log("chat1")


async def test_sigterm_edge_closes_clients_cleanly(tmp_path: Path, model_cache: Path) -> None:
    """SIGTERM on the edge ends the running turn with server_shutting_down and done,
    closes the client with 1001, and leaves no engine request running."""
    async with (
        NatsServer(tmp_path / "nats") as nats_server,
        run_system(
            tmp_path,
            nats_server.url,
            model_cache,
            long_chat=True,
            edge={"shutdown_timeout_s": 1.0},
        ) as system,
        connect(system.url) as ws,
    ):
        await ws.send(start_message(uuid.uuid4().hex, "talk for a long time"))
        while (await recv_json(ws, 60))["type"] != "token":
            pass
        stopping = asyncio.create_task(system.processes["edge"].stop())
        while (frame := await recv_json(ws, 10))["type"] == "token":
            pass
        assert frame["type"] == "error" and frame["error_code"] == "server_shutting_down"
        assert (await recv_json(ws, 5))["type"] == "done"
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws, 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        async with asyncio.timeout(15):
            assert await stopping == 0
        assert not any((await system.actor_load()).values())
