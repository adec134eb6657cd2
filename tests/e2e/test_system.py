"""The whole system in processes: the original clients' view of a turn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bus.history import append_turn
from launcher.nats import NatsServer
from launcher.net import http_status
from tests.support.stack import read_turn, recv_json, start_message
from tests.support.system import API_KEY, System, run_system

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> AsyncIterator[System]:
    workdir = tmp_path_factory.mktemp("system")
    async with (
        NatsServer(workdir / "nats") as nats_server,
        run_system(
            workdir,
            nats_server.url,
            model_cache,
            edge={"max_concurrent_connections": 4},
        ) as running,
    ):
        yield running


async def original_client_turn(url: str, utterance: str) -> list[dict]:
    """What the original server's test/warmup.py does: one connection, one start."""
    async with connect(url) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "start",
                    "session_id": str(uuid.uuid4()),
                    "assistant_gender": "female",
                    "persona_style": "wholesome",
                    "history_text": "",
                    "user_utterance": utterance,
                }
            )
        )
        frames = []
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
            frames.append(frame)
            if frame["type"] == "done":
                return frames


async def test_full_turn(system: System) -> None:
    """A start gets ack, toolcall, tokens, final and done from the real models."""
    frames = await original_client_turn(system.url, "who was Columbus?")
    types = [f["type"] for f in frames]
    assert types[:2] == ["ack", "toolcall"]
    assert types[-2:] == ["final", "done"]
    assert set(types[2:-2]) <= {"token"} and types.count("token") >= 1
    ack = frames[0]
    assert ack["for"] == "start" and ack["ok"] is True
    assert ack["models"] == {"chat": "tiny-qwen2", "tool": "tiny-qwen2"}
    assert ack["assistant_gender"] == "woman" and ack["persona_style"] == "wholesome"
    assert frames[1]["status"] in ("yes", "no")
    text = "".join(f["text"] for f in frames if f["type"] == "token")
    assert frames[-2]["normalized_text"] == " ".join(text.split())
    assert 0 < frames[-1]["usage"]["completion_tokens"] <= 48
    assert frames[-1]["usage"]["prompt_tokens"] > 0


async def test_concurrent_clients(system: System) -> None:
    """Several original-style clients at once each get a complete turn."""
    results = await asyncio.gather(
        *(original_client_turn(system.url, f"question number {i}") for i in range(4))
    )
    for frames in results:
        assert [f["type"] for f in frames][-2:] == ["final", "done"]


async def test_persistent_connection_many_turns(system: System) -> None:
    """A Pipecat-style connection runs several turns, settings kept across them."""
    async with connect(system.url) as ws:
        session_id = uuid.uuid4().hex
        await ws.send(start_message(session_id, "hello", persona_style="nerdy"))
        first = await read_turn(ws, within=60)
        for _ in range(2):
            await ws.send(
                json.dumps(
                    {"type": "start", "session_id": session_id, "user_utterance": "and then?"}
                )
            )
            frames = await read_turn(ws, within=60)
            assert frames[0]["persona_style"] == "nerdy"
            assert frames[0]["seed"] == first[0]["seed"]
            assert frames[-1]["type"] == "done" and "usage" in frames[-1]


async def test_cancel_and_engines_idle(system: System) -> None:
    """Cancel mid-turn answers done cancelled, and every engine is idle after."""
    async with connect(system.url) as ws:
        await ws.send(start_message(uuid.uuid4().hex, "tell me a long story"))
        assert (await recv_json(ws, 60))["type"] == "ack"
        await ws.send(json.dumps({"type": "cancel"}))
        while (frame := await recv_json(ws, 10))["type"] != "done":
            assert frame["type"] in ("toolcall", "token")
        assert frame == {"type": "done", "cancelled": True}
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv_json(ws, 5) == {"type": "pong"}  # nothing of the old turn
    loads = await system.actor_load()
    assert loads and not any(loads.values())


async def test_barge_in(system: System) -> None:
    """A second start cancels the first; the old turn's frames stop at the new ack."""
    async with connect(system.url) as ws:
        session_id = uuid.uuid4().hex
        await ws.send(start_message(session_id, "first question"))
        first = await recv_json(ws, 60)
        await ws.send(start_message(session_id, "second question"))
        while (frame := await recv_json(ws, 60))["type"] != "ack":
            assert frame["type"] in ("toolcall", "token")
        assert frame["turn_id"] != first["turn_id"]
        frames = await read_turn(ws, within=60)
        assert [f["type"] for f in frames][-2:] == ["final", "done"]
        assert sum(f["type"] == "toolcall" for f in frames) == 1
    loads = await system.actor_load()
    assert not any(loads.values())


@pytest.mark.parametrize("how", ["none", "wrong", "header", "bearer"])
async def test_auth(system: System, how: str) -> None:
    """Without the right key the client gets authentication_failed and close 1008."""
    base = f"ws://127.0.0.1:{system.edge_port}/ws"
    url, headers = {
        "none": (base, {}),
        "wrong": (base + "?api_key=nope", {}),
        "header": (base, {"X-API-Key": API_KEY}),
        "bearer": (base, {"Authorization": f"Bearer {API_KEY}"}),
    }[how]
    async with connect(url, additional_headers=headers) as ws:
        if how in ("header", "bearer"):
            await ws.send(json.dumps({"type": "ping"}))
            assert await recv_json(ws) == {"type": "pong"}
            return
        frame = await recv_json(ws)
        assert frame["type"] == "error" and frame["error_code"] == "authentication_failed"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1008


async def test_capacity(system: System) -> None:
    """Past MAX_CONCURRENT_CONNECTIONS a client gets server_at_capacity and close 1013."""
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(connect(system.url)) for _ in range(4)]
        for ws in held:  # all four really admitted
            await ws.send(json.dumps({"type": "ping"}))
            assert await recv_json(ws) == {"type": "pong"}
        async with connect(system.url) as extra:
            frame = await recv_json(extra)
            assert frame["error_code"] == "server_at_capacity"
            assert frame["capacity"] == {"active": 4, "max": 4, "available": 0, "at_capacity": True}
            with pytest.raises(ConnectionClosed) as closed:
                await extra.recv()
            assert closed.value.rcvd.code == 1013


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"type": "dance"}', "unknown_message_type"),
        ('{"type": "start", "session_id": "s"}', "missing_field"),
        ('{"type": "start", "session_id": 5, "user_utterance": "x"}', "invalid_field"),
        ('{"type": "start", "session_id": "a.*", "user_utterance": "x"}', "invalid_session_id"),
        (
            '{"type": "start", "session_id": "s", "user_utterance": "x", "persona_style": "odd"}',
            "invalid_field",
        ),
        (b"\x00binary", "invalid_message"),
    ],
)
async def test_bad_input(system: System, payload: str | bytes, code: str) -> None:
    """Each bad message gets its error code and the connection stays usable."""
    async with connect(system.url) as ws:
        await ws.send(payload)
        frame = await recv_json(ws)
        assert frame["type"] == "error" and frame["error_code"] == code
        assert frame["message"]
        await ws.send(start_message(uuid.uuid4().hex, "still there?"))
        frames = await read_turn(ws, within=60)
        assert frames[-1]["type"] == "done" and "usage" in frames[-1]


async def test_oversized_frame(system: System) -> None:
    """A frame over the size limit closes the connection with 1009."""
    async with connect(system.url, max_size=None) as ws:
        await ws.send(
            json.dumps({"type": "start", "session_id": "s", "user_utterance": "x" * 70_000})
        )
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 1009


async def test_http_endpoints(system: System) -> None:
    """/healthz needs no key; /status needs one and reports capacity."""
    assert await http_status("127.0.0.1", system.edge_port, "/healthz") == 200
    assert await http_status("127.0.0.1", system.edge_port, "/status") == 401
    assert await http_status("127.0.0.1", system.edge_port, f"/status?api_key={API_KEY}") == 200
    assert await http_status("127.0.0.1", system.edge_port, "/nope") == 404


async def test_conversation_prewarms_the_next_turn(system: System) -> None:
    """A client that keeps its history in the canonical format gets its second turn
    read from the chat actor's next-turn warm: all but the new utterance is cached. No
    vocabulary filler (<|reserved_N|>) reaches the client."""
    history = "User: hello there\nAssistant: hi, how can I help?"
    async with connect(system.url) as ws:
        session_id = uuid.uuid4().hex
        await ws.send(start_message(session_id, "tell me a story", history_text=history))
        first = await read_turn(ws, within=60)
        reply = next(f for f in first if f["type"] == "final")["normalized_text"]
        # Idle engines: the warm request, which counts as running, has finished.
        assert not any((await system.actor_load()).values())
        history = append_turn(history, "tell me a story", reply)
        await ws.send(start_message(session_id, "and then?", history_text=history))
        second = await read_turn(ws, within=60)
    usage = second[-1]["usage"]
    assert first[-1]["usage"]["cached_tokens"] < usage["cached_tokens"]
    assert usage["prompt_tokens"] - usage["cached_tokens"] < 20  # the utterance and markup
    for frames in (first, second):
        text = "".join(f["text"] for f in frames if f["type"] == "token")
        assert "<|reserved_" not in text
