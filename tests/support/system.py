"""The real system in processes, for end-to-end tests: actors and edge started with
``python -m``, tiny transformers models, a real nats-server, real WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import nats

from bus import subjects
from bus.codec import Codec
from launcher.net import free_port, http_status
from launcher.process import ChildProcess

__all__ = ["System", "run_system"]

API_KEY = "e2e-key"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class System:
    nats_url: str
    edge_port: int
    workdir: Path
    processes: dict[str, ChildProcess] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.edge_port}/ws?api_key={API_KEY}"

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text() if path.exists() else ""

    async def kill(self, name: str) -> None:
        await self.processes[name].kill()

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
    sections: dict[str, dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[System]:
    """Start actors (one after the other, as on a GPU) and the edge; stop them after.

    ``long_chat`` makes every reply 4,000 tokens, past the model's eos, so a test can
    act on a turn that is surely still running. ``sections`` are merged into the
    config's sections (``{"recording": {"enabled": True}}``); ``env`` is added to the
    processes' environment (the seed's overrides, e.g. ``CHAT_MAX_OUT``).
    """
    edge_port = free_port()
    engine = {"backend": "transformers", "model": "tiny-qwen2", "model_cache_dir": str(model_cache)}
    config_sections: dict[str, dict[str, Any]] = {
        "edge": {"port": edge_port, "api_key": API_KEY, **(edge or {})},
        "bus": {"url": nats_url},
        "models": {"deploy": deploy, "concurrent_model_call": concurrent},
        "tool": engine,
        "chat": {**engine, "max_out": 4000 if long_chat else 48},
        "chat.sampling": {"ignore_eos": long_chat},
        "actor": {"heartbeat_interval_s": 0.1, "drain_timeout_s": 2.0},
        "log": {"level": "INFO", "format": "text"},
    }
    for section, values in (sections or {}).items():
        config_sections[section] = {**config_sections.get(section, {}), **values}
    config = write_config(workdir / "config.toml", config_sections)
    extra_env = env or {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in list(env):
        if name in (
            "YAP_API_KEY",
            "DEPLOY_MODELS",
            "CONCURRENT_MODEL_CALL",
            "YAP_NATS_URL",
            "YAP_EDGE_PORT",
            "MAX_CONCURRENT_CONNECTIONS",
        ):
            del env[name]
    env.update(extra_env)
    system = System(nats_url=nats_url, edge_port=edge_port, workdir=workdir)
    kinds = ["tool"] * (tools if deploy in ("both", "tool") else 0) + (
        ["chat"] * (chats if deploy in ("both", "chat") else 0)
    )
    names = [f"{kind}{i}" for i, kind in enumerate(kinds)]
    async with contextlib.AsyncExitStack() as stack:
        for name, kind in zip(names, kinds, strict=True):
            log = stack.enter_context(_log_file(workdir, name))
            proc = ChildProcess(
                name,
                [sys.executable, "-m", "actors", kind, "--config", str(config)],
                env=env,
                stdout=log,
                stderr=log,
                stop_timeout_s=10,
            )
            system.processes[name] = await stack.enter_async_context(proc)
        edge_log = stack.enter_context(_log_file(workdir, "edge"))
        system.processes["edge"] = await stack.enter_async_context(
            ChildProcess(
                "edge",
                [sys.executable, "-m", "edge", "--config", str(config)],
                env=env,
                stdout=edge_log,
                stderr=edge_log,
                stop_timeout_s=10,
            )
        )
        await _wait_healthy(system, within=120.0)
        yield system


def _log_file(workdir: Path, name: str) -> BinaryIO:
    # A local file opened once per process start; blocking for microseconds is fine.
    return (workdir / f"{name}.log").open("wb")


async def _wait_healthy(system: System, within: float) -> None:
    """Poll /healthz (it is 200 once every deployed actor kind has a ready actor)."""
    try:
        async with asyncio.timeout(within):
            while await http_status("127.0.0.1", system.edge_port, "/healthz") != 200:
                for name, proc in system.processes.items():
                    if not proc.running:
                        raise RuntimeError(f"{name} exited early:\n{system.log(name)[-3000:]}")
                await asyncio.sleep(0.2)
    except TimeoutError:
        logs = "\n".join(f"--- {n}\n{system.log(n)[-2000:]}" for n in system.processes)
        raise RuntimeError(f"system not healthy within {within} s\n{logs}") from None
