"""The server-kept history in processes: tiny models, a real nats-server, an edge killed."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
from websockets.asyncio.client import connect

from bus.history import append_turn
from edge.server import SESSIONS_BUCKET
from edge.sessions import SessionSettings
from launcher.nats import NatsServer
from tests.support.stack import read_turn
from tests.support.system import run_system


def start(session_id: str, utterance: str) -> str:
    """What a client that lets the server keep its history sends: only the utterance."""
    return json.dumps(
        {
            "type": "start",
            "session_id": session_id,
            "assistant_gender": "female",
            "user_utterance": utterance,
            "server_history": True,
        }
    )


@contextlib.asynccontextmanager
async def stored_histories(nats_url: str, session_id: str) -> AsyncIterator[Any]:
    """A watch on the session's entry in the bucket: ``await next_history()`` gives the
    history of the next value the edge writes."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(SESSIONS_BUCKET)
        watcher = await kv.watch(session_id)
        assert await watcher.updates(10) is None  # a new session: no entry yet
        decoder = msgspec.json.Decoder(SessionSettings)

        async def next_history() -> str:
            entry = await watcher.updates(30)
            return decoder.decode(entry.value).history

        yield next_history
        await watcher.stop()
    finally:
        await nc.close()


async def test_server_history_warms_each_turn_and_survives_an_edge_restart(
    tmp_path: Path, model_cache: Path
) -> None:
    """A client that sends only utterances has every next turn read from the chat
    actor's warm (all but the utterance cached), and after its edge is killed and
    restarted, the conversation and the cache hit go on: the new edge process sends
    the history the actor predicted, byte for byte."""
    session_id = uuid.uuid4().hex
    usages: list[dict[str, int]] = []
    history = ""
    async with (
        NatsServer(tmp_path / "nats") as nats_server,
        run_system(tmp_path, nats_server.url, model_cache) as system,
        stored_histories(nats_server.url, session_id) as next_history,
    ):
        for utterance, restart_edge in (
            ("hello there", False),
            ("tell me a story", True),
            ("and then?", False),
        ):
            async with connect(system.url) as ws:
                await ws.send(start(session_id, utterance))
                frames = await read_turn(ws, within=60)
            assert frames[0]["server_history"] is True
            usages.append(frames[-1]["usage"])
            reply = next(f for f in frames if f["type"] == "final")["normalized_text"]
            history = append_turn(history, utterance, reply)
            # The turn's one write, before the edge may die, and the actor's warm done.
            assert await next_history() == history
            assert not any((await system.actor_load()).values())
            if restart_edge:
                await system.kill("edge")
                await system.until_ready("edge", restarts=1, within=60)
    for usage in usages[1:]:
        assert usage["prompt_tokens"] - usage["cached_tokens"] < 20, usages
    assert usages[0]["cached_tokens"] < usages[1]["cached_tokens"] < usages[2]["cached_tokens"]
