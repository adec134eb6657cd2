"""The system across hosts: network namespaces, one NATS node per host, actors on two
hosts, the edge on a third, a 3-node cluster with the session bucket on all three.

h1: nats-0, tool-0, chat-0    h2: nats-1, chat-1    h3: nats-2, edge-0

The engines are the compute-free bench engine (tokens at a fixed pace), so the test
is about the bus and the hosts, not about models; loads are a handful of sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect

from bus import subjects
from bus.codec import Codec
from configs.schema import Config
from edge.server import SESSIONS_BUCKET
from launcher.plan import with_cluster
from launcher.supervisor import Launcher, LaunchOptions
from tests.support.netns import TestNetwork, netns_unavailable
from tests.support.stack import recv_json, start_message

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

API_KEY = "hosts-key"
PLACEMENT = {
    "nats-0": "h1",
    "nats-1": "h2",
    "nats-2": "h3",
    "tool-0": "h1",
    "chat-0": "h1",
    "chat-1": "h2",
    "edge-0": "h3",
}
# The codes a turn that failed on the bus ends with (README, "the turn failed").
TURN_FAILURES = frozenset(
    {"actor_lost", "actor_error", "bus_unavailable", "no_actor_available", "turn_timeout"}
)
_TOKENS_PER_S = 40.0  # a turn of 400 tokens lasts 10 s: surely running when we act


@pytest_asyncio.fixture
async def network() -> AsyncIterator[TestNetwork]:
    reason = await netns_unavailable()
    if reason is not None:
        pytest.skip(f"no test hosts: {reason}")
    async with TestNetwork(3) as net:
        yield net


def _config(store: Path) -> Config:
    engine = {"backend": "bench", "model": "bench", "bench_tokens_per_s": _TOKENS_PER_S}
    data: dict[str, Any] = {
        "edge": {"host": "0.0.0.0", "port": 8000, "api_key": API_KEY},
        "nats_server": {"store_dir": str(store)},
        "models": {"deploy": "both"},
        "tool": {**engine, "max_out": 4},
        "chat": {**engine, "max_out": 400},
        "actor": {
            "chat_replicas": 2,
            "heartbeat_interval_s": 0.1,
            "drain_timeout_s": 1.0,
        },
        "launcher": {"backoff_initial_s": 0.2},
        "log": {"level": "INFO", "format": "text"},
    }
    return with_cluster(msgspec.convert(data, Config), 3)


@contextlib.asynccontextmanager
async def _system(tmp_path: Path, net: TestNetwork) -> AsyncIterator[Launcher]:
    options = LaunchOptions(
        work_dir=tmp_path / "run",
        log_dir=tmp_path / "logs",
        hosts={slot: net.host(host).as_host() for slot, host in PLACEMENT.items()},
        actor_ready_timeout_s=60.0,
        edge_ready_timeout_s=60.0,
        stop_timeout_s=5.0,
    )
    async with Launcher(_config(tmp_path / "nats"), os.environ, options) as launcher:
        yield launcher


def _url(launcher: Launcher) -> str:
    host, port = launcher.edge_address()
    return f"ws://{host}:{port}/ws?api_key={API_KEY}"


async def _until_token(ws: ClientConnection) -> None:
    while (frame := await recv_json(ws, 30))["type"] != "token":
        assert frame["type"] in ("ack", "toolcall"), frame


async def _rest_of_turn(ws: ClientConnection, within: float) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await recv_json(ws, within)
        frames.append(frame)
        if frame["type"] == "done":
            return frames


async def _served(ws: ClientConnection, session_id: str, deadline: float, *, new: bool) -> int:
    """Start turns until one streams a token (then cancel it); how many it took.

    A known session's start carries no settings, so it keeps the stored ones.
    """
    bare = json.dumps({"type": "start", "session_id": session_id, "user_utterance": "still?"})
    attempts = 0
    loop = asyncio.get_running_loop()
    while True:
        attempts += 1
        assert loop.time() < deadline, f"no turn served in time ({attempts - 1} failed)"
        await ws.send(start_message(session_id, "still there?") if new else bare)
        while (frame := await recv_json(ws, 10))["type"] in ("ack", "toolcall"):
            pass
        if frame["type"] == "token":
            await ws.send(json.dumps({"type": "cancel"}))
            await _rest_of_turn(ws, 10)
            return attempts
        assert frame["type"] == "error", frame
        assert (await recv_json(ws, 5))["type"] == "done"


async def _running(launcher: Launcher) -> dict[str, int]:
    """Engine requests per actor, from one heartbeat of each (the engines' own count)."""
    access = launcher.observer_access
    client = await nats.connect(servers=access.urls, user=access.user, password=access.password)
    codec = Codec()
    loads: dict[str, int] = {}
    try:
        sub = await client.subscribe(subjects.ALL_HEARTBEATS)
        async with asyncio.timeout(5):
            async for msg in sub.messages:
                beat = codec.decode_heartbeat(msg.data)
                loads[beat.actor_id] = beat.running
                if len(loads) == 3:
                    return loads
    finally:
        await client.close()
    return loads


async def test_sigkill_of_a_nats_node_under_load(tmp_path: Path, network: TestNetwork) -> None:
    """SIGKILL nats-0 with turns streaming: every turn ends with done (an error first
    if its route was lost), every session gets a new turn served within 5 s, and the
    session settings survive in the replicated bucket."""
    async with _system(tmp_path, network) as launcher, contextlib.AsyncExitStack() as stack:
        sessions = [uuid.uuid4().hex for _ in range(4)]
        sockets = [await stack.enter_async_context(connect(_url(launcher))) for _ in sessions]
        for ws, session_id in zip(sockets, sessions, strict=True):
            await ws.send(start_message(session_id, "talk for long", persona_style="nerdy"))
        for ws in sockets:
            await _until_token(ws)

        edge = launcher.credentials("edge-0")
        assert edge is not None
        urls = list(launcher.bus_urls)
        # Read the bucket from h3's node: it is not the one that dies.
        reader = await nats.connect(
            urls[2],
            user=edge.user,
            password=edge.password,
            inbox_prefix=subjects.inbox_prefix("edge-0"),  # its user reads only its inbox
        )
        stack.push_async_callback(reader.close)
        kv = await reader.jetstream().key_value(SESSIONS_BUCKET)
        info = await kv.status()
        assert info.stream_info.config.num_replicas == 3
        assert (await kv.get(sessions[0])).value

        killed_at = asyncio.get_running_loop().time()
        await launcher.services["nats-0"].kill()

        async def new_turns_within_5_s() -> int:
            async with connect(_url(launcher)) as fresh:
                return await _served(fresh, uuid.uuid4().hex, deadline=killed_at + 5.0, new=True)

        async def old_turns_end(ws: ClientConnection) -> None:
            frames = await _rest_of_turn(ws, within=20)
            errors = [f for f in frames if f["type"] == "error"]
            if errors:  # on the lost route: said so, then done
                assert errors[0]["error_code"] in TURN_FAILURES, errors
                assert frames[-1] == frames[frames.index(errors[0]) + 1]
            else:  # the session went on: streamed to its end
                assert frames[-2]["type"] == "final"

        # Meanwhile, not after: the turns that survived stream on for seconds.
        await asyncio.gather(new_turns_within_5_s(), *(old_turns_end(ws) for ws in sockets))
        loop = asyncio.get_running_loop()
        for ws, session_id in zip(sockets, sessions, strict=True):
            await _served(ws, session_id, deadline=loop.time() + 10.0, new=False)

        # The entry is still there, and a new connection's turn finds its settings.
        while True:  # the bucket's leader may be moving to a live node
            try:
                entry = await kv.get(sessions[0])
                break
            except Exception:
                assert loop.time() < killed_at + 15.0, "session entry lost"
                await asyncio.sleep(0.2)
        assert json.loads(entry.value or b"{}")
        async with connect(_url(launcher)) as fresh:
            bare = {"type": "start", "session_id": sessions[0], "user_utterance": "me again"}
            await fresh.send(json.dumps(bare))
            ack = await recv_json(fresh, 10)
            assert ack["type"] == "ack" and ack["persona_style"] == "nerdy", ack
            await fresh.send(json.dumps({"type": "cancel"}))
            await _rest_of_turn(fresh, 10)


async def test_cutting_an_actor_hosts_link(tmp_path: Path, network: TestNetwork) -> None:
    """Cut h2's link while chat-1 streams: its turns end with actor_lost within 2 s,
    turns on chat-0 go on streaming, and the next turn of a lost session is served."""
    async with _system(tmp_path, network) as launcher, contextlib.AsyncExitStack() as stack:
        sockets: dict[str, ClientConnection] = {}
        loads: dict[str, int] = {}
        # Queue groups spread turns at random: add sessions until both replicas stream.
        for _ in range(8):
            session_id = uuid.uuid4().hex
            ws = await stack.enter_async_context(connect(_url(launcher)))
            await ws.send(start_message(session_id, "talk for long"))
            await _until_token(ws)
            sockets[session_id] = ws
            loads = await _running(launcher)
            if loads.get("chat-1") and loads.get("chat-0"):
                break
        assert loads.get("chat-1") and loads.get("chat-0"), loads

        async def turn_end(ws: ClientConnection) -> tuple[list[dict[str, Any]], float]:
            """The turn's frames, and when its first error (if any) arrived."""
            frames: list[dict[str, Any]] = []
            errored_at = 0.0
            while not frames or frames[-1]["type"] != "done":
                frames.append(await recv_json(ws, 20))
                if frames[-1]["type"] == "error" and not errored_at:
                    errored_at = time.monotonic()
            return frames, errored_at

        cut_at = time.monotonic()
        await network.cut("h2")
        ends = await asyncio.gather(*(turn_end(ws) for ws in sockets.values()))
        lost: list[str] = []
        kept: list[str] = []
        for session_id, (frames, errored_at) in zip(sockets, ends, strict=True):
            errors = [f for f in frames if f["type"] == "error"]
            if errors:
                assert errors[0]["error_code"] == "actor_lost", errors
                assert errored_at - cut_at < 2.0, f"actor_lost after {errored_at - cut_at:.2f} s"
                lost.append(session_id)
            else:
                assert frames[-2]["type"] == "final"
                # Ran on after the cut: its tokens kept coming in.
                assert sum(f["type"] == "token" for f in frames) > 1
                kept.append(session_id)
        assert len(lost) == loads["chat-1"], (lost, loads)
        assert kept
        loop = asyncio.get_running_loop()
        for session_id in lost:
            await _served(sockets[session_id], session_id, deadline=loop.time() + 10.0, new=False)
        await network.mend("h2")  # so that chat-1 and nats-1 stop in order
