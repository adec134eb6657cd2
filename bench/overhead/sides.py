"""The processes under test: (a) the bus system, (b) the direct server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bench.overhead.spec import API_KEY, CANCEL, READY_TIMEOUT_S, Settings, Side
from configs.loader import ENV_OVERRIDES
from configs.schema import Config
from launcher.net import free_port, http_status
from launcher.process import ChildProcess
from launcher.services import ChildService
from launcher.supervisor import Launcher, LaunchOptions

__all__ = ["BenchSide", "BusSide", "DirectSide", "child_env", "wait_ready"]

# --- the processes under test ------------------------------------------------------


def child_env() -> dict[str, str]:
    """This environment without the config overrides, so the TOML file decides."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def wait_ready(url: str, procs: Sequence[ChildProcess], logs: Path) -> None:
    """Until a turn streams a token and then cancels cleanly on ``url``.

    That is the only readiness that matters here: edge, bus, actor and engine all
    took part, whatever the turn length and rate.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    start = json.dumps(
        {
            "type": "start",
            "session_id": f"probe-{uuid.uuid4().hex[:8]}",
            "assistant_gender": "female",
            "user_utterance": "probe",
        }
    )
    last_error = "no attempt"
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.running:
                tail = (logs / f"{proc.name}.log").read_text()[-2000:]
                raise RuntimeError(f"{proc.name} exited early:\n{tail}")
        try:
            async with (
                asyncio.timeout(5.0),
                connect(url, proxy=None, open_timeout=2.0, close_timeout=1.0) as ws,
            ):
                await ws.send(start)
                while True:
                    frame = json.loads(await ws.recv())
                    kind = frame.get("type")
                    if kind == "token":
                        await ws.send(CANCEL)
                    elif kind == "done" and frame.get("cancelled"):
                        return
                    elif kind in ("error", "done"):
                        last_error = str(frame.get("error_code"))
                        break
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            last_error = repr(exc)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"no turn streamed on {url} within {READY_TIMEOUT_S:.0f} s: {last_error}")


class BenchSide:
    """Processes of one side, restartable at another rate; an async context manager."""

    side: Side
    deploy: str = "chat"

    def __init__(self, workdir: Path, tokens: int, rate: float) -> None:
        self.workdir = workdir
        self.tokens = tokens
        self.rate = rate
        self.abort_log = str(workdir / f"aborts-{uuid.uuid4().hex[:6]}.log")
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def engine_steps(self) -> int:
        return 2 if self.deploy == "both" else 1

    def pids(self) -> dict[str, int]:
        raise NotImplementedError

    async def _spawn(self, name: str, argv: Sequence[str]) -> ChildProcess:
        log = self._stack.enter_context((self.workdir / f"{name}.log").open("ab"))
        proc = ChildProcess(
            name, argv, env=child_env(), stdout=log, stderr=log, stop_timeout_s=10.0
        )
        return await self._stack.enter_async_context(proc)

    async def __aenter__(self) -> BenchSide:
        await self._stack.__aenter__()
        try:
            await self.start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def start(self) -> None:
        raise NotImplementedError

    async def restart(self, tokens: int, rate: float) -> None:
        raise NotImplementedError


class BusSide(BenchSide):
    """nats-server is shared; this is the actor(s) and the edge, run by the launcher.

    Two launchers: one for the edge processes (``edges`` of them on one port, as
    ``edge.processes`` runs them), which keep running (they are what is measured),
    and one for the actors, replaced at each rate of the throughput ladder.
    """

    side: Side = "bus"

    def __init__(
        self,
        workdir: Path,
        nats_url: str,
        tokens: int,
        rate: float,
        deploy: str,
        settings: Settings,
        edges: int = 1,
    ) -> None:
        super().__init__(workdir, tokens, rate)
        self.deploy = deploy
        self.edges = edges
        self._nats_url = nats_url
        self._log_level = settings.log_level
        self._flush_ms = settings.stream_flush_ms
        self._chat_replicas = settings.chat_replicas
        self._recording = settings.recording
        self._port = free_port()
        self._edge: Launcher | None = None
        self._actors: Launcher | None = None
        self._runs = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/ws?api_key={API_KEY}"

    def pids(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        if self._actors is not None:
            # One replica of a kind stands for it; more are summed under their slots.
            for name, pid in self._actors.pids.items():
                pids[name.split("-")[0] if name.endswith("-0") else name] = pid
        if self._edge is not None:
            # edge-0 is "edge"; more edges count under their slots (PhaseResult.cpu_of).
            for name, pid in self._edge.pids.items():
                if name.startswith("edge-"):
                    pids["edge" if name == "edge-0" else name] = pid
        return pids

    def config(self) -> Config:
        engine = {"backend": "bench", "model": "bench", "bench_tokens_per_s": self.rate}
        data: dict[str, Any] = {
            "edge": {
                "port": self._port,
                "api_key": API_KEY,
                "max_concurrent_connections": 8192,
                "messages_per_minute": 0,
                "cancels_per_minute": 0,
                "stream_flush_ms": self._flush_ms,
                "processes": self.edges,
                # The edges' shared connection count, in this run's own directory.
                "slots_path": str(self.workdir / f"edge-slots-{self.edges}"),
            },
            "bus": {"url": self._nats_url},
            "models": {"deploy": self.deploy},
            "chat": {
                **engine,
                "max_out": self.tokens,
                "bench_stamp": True,
                "bench_abort_log": self.abort_log,
            },
            "tool": engine,
            "actor": {"max_running": 8192, "chat_replicas": self._chat_replicas},
            "log": {"level": self._log_level, "format": "text"},
            "recording": {"enabled": self._recording},
        }
        return msgspec.convert(data, Config)

    def _launcher(self, *, actors: bool) -> Launcher:
        self._runs += 1
        options = LaunchOptions(
            work_dir=self.workdir / f"run-{self._runs}",
            log_dir=self.workdir,
            start_nats=False,
            run_actors=actors,
            run_edges=not actors,
            actor_ready_timeout_s=READY_TIMEOUT_S,
            edge_ready_timeout_s=READY_TIMEOUT_S,
        )
        return Launcher(self.config(), os.environ, options)

    def _processes(self) -> list[ChildProcess]:
        return [
            service.child
            for launcher in (self._actors, self._edge)
            if launcher is not None
            for service in launcher.services.values()
            if isinstance(service, ChildService) and service.child is not None
        ]

    async def start(self) -> None:
        self._stack.push_async_callback(self._stop_actors)
        self._actors = await self._stack.enter_async_context(self._launcher(actors=True))
        self._edge = await self._stack.enter_async_context(self._launcher(actors=False))
        await wait_ready(self.url, self._processes(), self.workdir)

    async def _stop_actors(self) -> None:
        actors, self._actors = self._actors, None
        if actors is not None:
            await actors.__aexit__(None, None, None)

    async def restart(self, tokens: int, rate: float) -> None:
        """New actors at ``rate``; the edge (what is measured) keeps running."""
        self.tokens, self.rate = tokens, rate
        await self._stop_actors()
        actors = self._launcher(actors=True)
        self._actors = await actors.__aenter__()
        await wait_ready(self.url, self._processes(), self.workdir)


class DirectSide(BenchSide):
    side: Side = "direct"

    def __init__(self, workdir: Path, tokens: int, rate: float) -> None:
        super().__init__(workdir, tokens, rate)
        self._port = free_port()
        self._server: ChildProcess | None = None
        self._server_stack = contextlib.AsyncExitStack()
        self._starts = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/ws"

    def pids(self) -> dict[str, int]:
        server = self._server
        return {"direct": server.pid} if server is not None and server.pid is not None else {}

    async def start(self) -> None:
        self._stack.push_async_callback(self._stop_server)
        await self._start_server()

    async def _start_server(self) -> None:
        await self._server_stack.__aenter__()
        self._starts += 1
        name = f"direct-{self._starts}"
        log = self._server_stack.enter_context((self.workdir / f"{name}.log").open("ab"))
        proc = ChildProcess(
            name,
            [
                sys.executable,
                "-m",
                "bench.direct_server",
                "--port",
                str(self._port),
                "--rate",
                str(self.rate),
                "--tokens",
                str(self.tokens),
                "--stamp",
                "--abort-log",
                self.abort_log,
            ],
            env=child_env(),
            stdout=log,
            stderr=log,
            stop_timeout_s=10.0,
        )
        self._server = await self._server_stack.enter_async_context(proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while await http_status("127.0.0.1", self._port, "/healthz") != 200:
            if not proc.running or time.monotonic() > deadline:
                tail = (self.workdir / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"direct server did not start:\n{tail}")
            await asyncio.sleep(0.05)
        await wait_ready(self.url, [proc], self.workdir)

    async def _stop_server(self) -> None:
        await self._server_stack.aclose()
        self._server = None

    async def restart(self, tokens: int, rate: float) -> None:
        self.tokens, self.rate = tokens, rate
        await self._stop_server()
        self._server_stack = contextlib.AsyncExitStack()
        await self._start_server()
