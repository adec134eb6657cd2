"""An in-process system for integration tests: the real edge and actor services with
fake engines, on a real nats-server, driven by a real WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from actors.chat import NEXT_WARM_PREFIX, ChatWorker
from actors.engines.fake import FakeEngine
from actors.service import ActorService
from actors.tool import ToolWorker
from bus.codec import Codec
from configs.schema import BusConfig, Config
from edge.server import EdgeServer

__all__ = ["Stack", "client_warms", "make_config", "read_turn", "recv_json", "run_stack"]

API_KEY = "test-key"


def make_config(nats_url: str, **sections: dict[str, Any]) -> Config:
    """A config for tests: free edge port, fast engines, overrides per section."""
    data: dict[str, Any] = {
        "edge": {"port": 0, "api_key": API_KEY},
        "bus": {"url": nats_url},
        "tool": {"backend": "fake", "bench_tokens_per_s": 0},
        "chat": {"backend": "fake", "bench_tokens_per_s": 0},
        "actor": {"heartbeat_interval_s": 0.1},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return msgspec.convert(data, Config)


def client_warms(engine: FakeEngine) -> list[str]:
    """The prompts of the warm requests clients asked for (warm_persona, warm_history),
    leaving out the chat actor's own next-turn warms."""
    return [
        text
        for text, rid in zip(engine.warmed, engine.warm_request_ids, strict=True)
        if not (rid or "").startswith(NEXT_WARM_PREFIX)
    ]


@dataclass
class Stack:
    config: Config
    edge: EdgeServer
    actors: list[ActorService] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.edge.port}/ws?api_key={API_KEY}"

    def engines(self, kind: str) -> list[FakeEngine]:
        return [a.engine for a in self.actors if a.kind == kind]  # type: ignore[misc]

    def running_requests(self) -> int:
        return sum(a.engine.running() for a in self.actors)

    async def wait_idle(self, within: float = 5.0) -> None:
        """Wait until no engine runs a request; fails the test after ``within`` s."""
        async with asyncio.timeout(within):
            for actor in self.actors:
                await actor.engine.wait_idle()  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def client(self, url: str | None = None) -> AsyncIterator[ClientConnection]:
        async with connect(url or self.url, max_size=2**22) as ws:
            yield ws


@contextlib.asynccontextmanager
async def run_stack(
    config: Config,
    *,
    tools: int = 1,
    chats: int = 1,
    actor_bus: BusConfig | None = None,
    actor_buses: Mapping[str, BusConfig] | None = None,
    edge_id: str | None = None,
) -> AsyncIterator[Stack]:
    """The edge and ``tools`` + ``chats`` actors (ids ``tool-0``, ..., ``chat-<n>``).

    ``actor_buses`` gives an actor, by id, bus credentials of its own (else
    ``actor_bus``, else the config's); ``edge_id`` names the edge (else random).
    """
    log = logging.getLogger("yap.test")
    async with contextlib.AsyncExitStack() as stack:
        actors: list[ActorService] = []
        kinds = ["tool"] * (tools if config.models.tool else 0) + (
            ["chat"] * (chats if config.models.chat else 0)
        )
        for index, kind in enumerate(kinds):
            engine_config = config.tool if kind == "tool" else config.chat
            engine = FakeEngine(engine_config)
            worker = (
                ToolWorker(config.tool, engine)
                if kind == "tool"
                else ChatWorker(config.chat, engine, f"{kind}-{index}")
            )
            actor_id = f"{kind}-{index}"
            service = ActorService(
                config=config.actor,
                actor_id=actor_id,
                engine=engine,
                worker=worker,
                bus=(actor_buses or {}).get(actor_id) or actor_bus or config.bus,
                codec=Codec(),
                log=log,
            )
            actors.append(await stack.enter_async_context(service))
        edge = await stack.enter_async_context(EdgeServer(config, log, edge_id=edge_id))
        if actors:  # ready means the edge has heard every actor's heartbeat
            async with asyncio.timeout(5):
                registry = edge.registry
                while len(registry.snapshot()) < len(actors):
                    registry.heard.clear()
                    await registry.heard.wait()
        yield Stack(config=config, edge=edge, actors=actors)


async def recv_json(ws: ClientConnection, within: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        return json.loads(await ws.recv())


async def read_turn(ws: ClientConnection, within: float = 10.0) -> list[dict[str, Any]]:
    """Frames up to and including the next ``done``."""
    received = []
    while True:
        frame = await recv_json(ws, within)
        received.append(frame)
        if frame["type"] == "done":
            return received


def start_message(session_id: str, utterance: str = "hello there", **extra: Any) -> str:
    message = {
        "type": "start",
        "session_id": session_id,
        "assistant_gender": "female",
        "persona_style": "wholesome",
        "history_text": "",
        "user_utterance": utterance,
        **extra,
    }
    return json.dumps(message)
