"""Two real edge processes on one port (SO_REUSEPORT) share one connection limit.

``max_concurrent_connections`` is the limit of the whole host: with
``edge.processes = 2`` the edges count together in a slot file, and a SIGKILLed
edge's connections stop counting at once (its locks die with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bus import subjects
from bus.codec import Codec
from launcher.nats import NatsServer
from launcher.net import free_port
from launcher.process import ChildProcess
from launcher.tomlfile import write_config
from tests.support.stack import make_config

API_KEY = "two-edges"
LIMIT = 3
PING = json.dumps({"type": "ping"})


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(5):
        return json.loads(await ws.recv())


async def _edge(
    stack: contextlib.AsyncExitStack, tmp_path: Path, config: Path, edge_id: str
) -> ChildProcess:
    log = stack.enter_context((tmp_path / f"{edge_id}.log").open("wb"))
    argv = [sys.executable, "-m", "edge", "--config", str(config), "--edge-id", edge_id]
    process = ChildProcess(edge_id, argv, stdout=log, stderr=log, stop_timeout_s=10)
    return await stack.enter_async_context(process)


@contextlib.asynccontextmanager
async def _listening(url: str, edge_ids: set[str]) -> AsyncIterator[None]:
    """Until every edge in ``edge_ids`` has published stats (it does once it listens)."""
    codec = Codec()
    nc = await nats.connect(url)
    try:
        seen: set[str] = set()
        sub = await nc.subscribe(subjects.ALL_EDGE_STATS)
        yield
        async with asyncio.timeout(30):
            async for msg in sub.messages:
                seen.add(codec.decode_edge_stats(msg.data).edge_id)
                if edge_ids <= seen:
                    return
    finally:
        await nc.close()


async def _admitted(url: str, stack: contextlib.AsyncExitStack) -> dict[str, Any] | None:
    """Open a connection; None if it is served (it stays open), else the refusal."""
    ws = await stack.enter_async_context(connect(url))
    with contextlib.suppress(ConnectionClosed):  # a refused one is closed at once
        await ws.send(PING)
    frame = await _recv(ws)  # the refusal was received before the close
    if frame == {"type": "pong"}:
        return None
    return frame


@pytest.mark.timeout(120)
async def test_two_edge_processes_share_one_limit(nats_server: NatsServer, tmp_path: Path) -> None:
    """Two edges on one port admit LIMIT connections together, each refusing past it with
    the host-wide count; after one is SIGKILLed the other admits LIMIT again."""
    port = free_port()
    config = write_config(
        tmp_path / "edge.toml",
        make_config(
            nats_server.url,
            edge={
                "port": port,
                "api_key": API_KEY,
                "max_concurrent_connections": LIMIT,
                "processes": 2,
                "slots_path": str(tmp_path / "slots"),
            },
            log={"level": "INFO", "format": "text"},
        ),
    )
    url = f"ws://127.0.0.1:{port}/ws?api_key={API_KEY}"
    async with contextlib.AsyncExitStack() as stack:
        async with _listening(nats_server.url, {"edge-a"}):
            edge_a = await _edge(stack, tmp_path, config, "edge-a")
        held = contextlib.AsyncExitStack()
        await stack.enter_async_context(held)
        # Only edge-a listens yet: these are surely its connections.
        assert [await _admitted(url, held) for _ in range(LIMIT)] == [None] * LIMIT
        async with _listening(nats_server.url, {"edge-b"}):
            await _edge(stack, tmp_path, config, "edge-b")
        # The kernel spreads new connections over both edges; every one is refused,
        # edge-b's too, though edge-b itself holds none.
        async with contextlib.AsyncExitStack() as attempts:
            refusals = [await _admitted(url, attempts) for _ in range(16)]
        for refusal in refusals:
            assert refusal is not None and refusal["error_code"] == "server_at_capacity"
            assert refusal["capacity"] == {
                "active": LIMIT,
                "max": LIMIT,
                "available": 0,
                "at_capacity": True,
            }
        log_b = (tmp_path / "edge-b.log").read_text()
        assert "rejected: at capacity (3/3)" in log_b, "no attempt reached edge-b"

        await edge_a.kill()  # its slots go with it, whatever state it was in
        await held.aclose()
        assert [await _admitted(url, stack) for _ in range(LIMIT)] == [None] * LIMIT
        refusal = await _admitted(url, stack)
        assert refusal is not None and refusal["capacity"]["active"] == LIMIT
