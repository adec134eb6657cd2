"""The real system in processes, for end-to-end tests: actors and edge started by the
launcher library (``python -m actors``, ``python -m edge``), tiny transformers models,
a real nats-server, real WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import nats

from bus import subjects
from bus.codec import Codec
from configs.schema import Config
from launcher.process import ChildProcess
from launcher.services import ChildService
from launcher.supervisor import Launcher, LaunchOptions
from tests.support.ports import free_port

__all__ = ["API_KEY", "System", "run_system", "system_config"]

API_KEY = "e2e-key"
_READY_TIMEOUT_S = 120.0


class System:
    """A running system; ``processes`` names them as before the launcher ran them
    (``tool0``, ``chat1``, ``edge``), ``services`` by their slots (``chat-0``)."""

    def __init__(
        self,
        launcher: Launcher,
        nats_url: str,
        workdir: Path,
        tools: int,
        changes: asyncio.Condition,
    ) -> None:
        self.launcher = launcher
        self._changes = changes
        self.nats_url = nats_url
        self.workdir = workdir
        self.edge_port = launcher.effective_config.edge.port
        # The old names counted tools and chats together: tool0, chat1, chat2.
        self._legacy: dict[str, str] = {}
        for slot in launcher.plan.actors:
            index = slot.index if slot.kind == "tool" else tools + slot.index
            self._legacy[f"{slot.kind}{index}"] = slot.name
        self._legacy["edge"] = "edge-0"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.edge_port}/ws?api_key={API_KEY}"

    @property
    def services(self) -> dict[str, ChildService]:
        """Actor and edge slots by name; a slot's process changes when it restarts."""
        return {
            name: service
            for name, service in self.launcher.services.items()
            if isinstance(service, ChildService)
        }

    @property
    def processes(self) -> dict[str, ChildProcess]:
        """The current process of each actor and edge, by its old name."""
        services = self.services
        return {
            old: child
            for old, slot in self._legacy.items()
            if slot in services and (child := services[slot].child) is not None
        }

    def slot(self, name: str) -> str:
        """The slot name for an old name (``chat1`` -> ``chat-0``); slots pass through."""
        return self._legacy.get(name, name)

    def log(self, name: str) -> str:
        path = self.workdir / f"{self.slot(name)}.log"
        return path.read_text() if path.exists() else ""

    async def kill(self, name: str) -> None:
        await self.services[self.slot(name)].kill()

    async def until_ready(self, name: str, *, restarts: int, within: float) -> None:
        """Wait until slot ``name`` is ready after at least ``restarts`` restarts.

        Woken by the launcher's own change callback, so no polling; counting restarts
        keeps a slot that has not yet noticed its process died from passing as back.

        Raises:
            TimeoutError: it was not back within ``within`` seconds.
        """
        service = self.services[self.slot(name)]
        async with asyncio.timeout(within), self._changes:
            await self._changes.wait_for(
                lambda: service.state == "ready" and service.restarts >= restarts
            )

    async def actor_load(self, within: float = 10.0) -> dict[str, int]:
        """Running engine requests per live actor, once every actor reports zero.

        Heartbeats carry the engine's own count, so this is the engine speaking.
        """
        return await self._heartbeats(within, until_idle=True)

    async def actor_load_snapshot(self, within: float = 5.0) -> dict[str, int]:
        """Running engine requests per live actor, one heartbeat each."""
        return await self._heartbeats(within, until_idle=False)

    async def _heartbeats(self, within: float, *, until_idle: bool) -> dict[str, int]:
        codec = Codec()
        loads: dict[str, int] = {}
        expected = sum(1 for n, p in self.processes.items() if n != "edge" and p.running)
        nc = await nats.connect(self.nats_url)
        try:
            sub = await nc.subscribe(subjects.ALL_HEARTBEATS)
            async with asyncio.timeout(within):
                async for msg in sub.messages:
                    beat = codec.decode_heartbeat(msg.data)
                    loads[beat.actor_id] = beat.running
                    if len(loads) >= expected and not (until_idle and any(loads.values())):
                        return loads
        finally:
            await nc.close()
        return loads


def system_config(
    nats_url: str,
    model_cache: Path,
    *,
    deploy: str = "both",
    concurrent: bool = False,
    tools: int = 1,
    chats: int = 1,
    edge: Mapping[str, Any] | None = None,
    long_chat: bool = False,
    restart: bool = True,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """The config :func:`run_system` runs: tiny models, fast heartbeats, a free port."""
    engine = {"backend": "transformers", "model": "tiny-qwen2", "model_cache_dir": str(model_cache)}
    data: dict[str, dict[str, Any]] = {
        "edge": {"port": free_port(), "api_key": API_KEY, **(edge or {})},
        "bus": {"url": nats_url},
        "models": {"deploy": deploy, "concurrent_model_call": concurrent},
        "tool": engine,
        "chat": {
            **engine,
            "max_out": 4000 if long_chat else 48,
            "sampling": {"ignore_eos": long_chat},
        },
        "actor": {
            "heartbeat_interval_s": 0.1,
            "drain_timeout_s": 2.0,
            "tool_replicas": tools,
            "chat_replicas": chats,
        },
        # Quick to come back, and never giving up for the length of a test.
        "launcher": {"restart": restart, "backoff_initial_s": 0.2, "max_crashes": 20},
        "log": {"level": "INFO", "format": "text"},
    }
    for section, values in (sections or {}).items():
        data.setdefault(section, {}).update(values)
    return msgspec.convert(data, Config)


@contextlib.asynccontextmanager
async def run_system(
    workdir: Path,
    nats_url: str,
    model_cache: Path,
    *,
    deploy: str = "both",
    concurrent: bool = False,
    tools: int = 1,
    chats: int = 1,
    edge: dict[str, Any] | None = None,
    long_chat: bool = False,
    restart: bool = True,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[System]:
    """Start actors (one after the other, as on a GPU) and the edge; stop them after.

    The launcher supervises them as ``just up`` does: a process that dies is
    restarted in its slot (``restart=False``: it stays dead). ``long_chat`` makes
    every reply 4,000 tokens, past the model's eos, so a test can act on a turn that
    is surely still running. ``sections`` adds any other config.
    """
    config = system_config(
        nats_url,
        model_cache,
        deploy=deploy,
        concurrent=concurrent,
        tools=tools,
        chats=chats,
        edge=edge,
        long_chat=long_chat,
        restart=restart,
        sections=sections,
    )
    options = LaunchOptions(
        work_dir=workdir,
        log_dir=workdir,
        start_nats=False,
        actor_ready_timeout_s=_READY_TIMEOUT_S,
        edge_ready_timeout_s=_READY_TIMEOUT_S,
    )
    changes = asyncio.Condition()

    def changed() -> None:
        # The launcher calls back synchronously; wake the waiters from a task.
        async def notify() -> None:
            async with changes:
                changes.notify_all()

        notifiers.add(task := asyncio.ensure_future(notify()))
        task.add_done_callback(notifiers.discard)

    notifiers: set[asyncio.Future[None]] = set()
    async with Launcher(config, os.environ, options, on_change=changed) as launcher:
        yield System(launcher, nats_url, workdir, tools if config.models.tool else 0, changes)
