"""``just up``: start nats-server, the actors and the edge in order; stop them in reverse.

Services start one at a time and each must be ready before the next starts: GPU
engines measure free memory when they load, so two loading at once would both
claim the same memory. An actor is ready when it sends a heartbeat with
``ready=True``; the edge when its ``/healthz`` answers 200. After that the
supervisor only watches: a stop request, or any service exiting on its own, stops
everything in reverse order (edge, chat, tool, nats-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.codec import BusDecodeError, Codec
from bus.permissions import authorization_config, new_passwords
from bus.subjects import ALL_HEARTBEATS
from configs.schema import Config
from launcher.errors import LauncherError, ServiceExited, StartupTimeout
from launcher.nats import NatsServer
from launcher.net import http_status
from launcher.process import ChildProcess
from launcher.status import BusAccess

__all__ = ["LaunchOptions", "Supervisor"]

ActorKind = Literal["tool", "chat"]

_EDGE_POLL_S: Final = 0.1
_STOP: Final = "stop requested"


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    """How the supervisor runs things; the config says what to run.

    Args:
        config_path: passed to every child as ``--config``; None lets each child
            use its own default (the embedded CPU config).
        start_nats: run nats-server from ``config.nats_server``; False uses the bus
            at ``config.bus.url`` as it is.
        python: the interpreter children run with.
        actors_module, edge_module: the ``python -m`` targets (tests swap in fakes).
        actor_ready_timeout_s: how long one actor may take to load its model.
        edge_ready_timeout_s: how long the edge may take to answer ``/healthz``.
        stop_timeout_s: SIGTERM grace per child before SIGKILL.
    """

    config_path: str | None = None
    start_nats: bool = True
    python: str = sys.executable
    actors_module: str = "actors"
    edge_module: str = "edge"
    actor_ready_timeout_s: float = 900.0
    edge_ready_timeout_s: float = 60.0
    nats_ready_timeout_s: float = 15.0
    stop_timeout_s: float = 10.0


class _Stopped(Exception):
    """A stop was requested while services were starting."""


class Supervisor:
    """Runs the whole deployment until asked to stop or until a service dies.

    Args:
        config: the loaded config (with any launcher overrides applied).
        env: the environment children inherit; the supervisor adds
            ``YAP_NATS_URL`` when it runs nats-server itself.
        options: see :class:`LaunchOptions`.
        on_ready: called once, when every service is ready.
        logger: where one line per lifecycle event goes.
    """

    def __init__(
        self,
        config: Config,
        env: Mapping[str, str],
        options: LaunchOptions,
        *,
        on_ready: Callable[[], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._config = config
        self._env = dict(env)
        self._options = options
        self._on_ready = on_ready
        self._log = logger or logging.getLogger("launcher")
        self._stop = asyncio.Event()
        # Every started service, watched for unexpected exits: (name, wait for exit).
        self._watched: list[tuple[str, Callable[[], Awaitable[int]]]] = []
        self._pids: dict[str, int] = {}
        self._observer: tuple[str, str] | None = None  # (password, user) for heartbeats
        self._replay_password: str | None = None
        self._bus_url = config.bus.url

    @property
    def observer_access(self) -> BusAccess:
        """How ``just status`` reaches this run's bus (valid once it is ready)."""
        if self._observer is None:
            bus = self._config.bus
            return BusAccess(self._bus_url, bus.user, bus.password)
        password, user = self._observer
        return BusAccess(self._bus_url, user, password)

    @property
    def replay_access(self) -> BusAccess | None:
        """How ``python -m replay`` reaches this run's bus; None when it is not ours."""
        if self._replay_password is None:
            return None
        return BusAccess(self._bus_url, "replay", self._replay_password)

    @property
    def pids(self) -> Mapping[str, int]:
        """Pids of the services started so far, by name."""
        return dict(self._pids)

    def request_stop(self) -> None:
        """Stop everything (in reverse order) and make :meth:`run` return; idempotent."""
        if not self._stop.is_set():
            self._log.info("stop requested")
            self._stop.set()

    async def run(self) -> int:
        """Start everything, watch it, stop it; return the process exit status.

        0 after a requested stop, 1 when a service failed to start or exited on
        its own.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        status = 0
        async with contextlib.AsyncExitStack() as services:
            try:
                await self._start_all(services)
                self._log.info("all services ready in %.1f s", loop.time() - began)
                if self._on_ready is not None:
                    self._on_ready()
                await self._until(None, what="shutdown", timeout_s=None)
                # Only a stop request gets here; an exit raises ServiceExited.
                self._log.info("stopping all services")
            except _Stopped:
                self._log.info("stopping the services started so far")
            except LauncherError as exc:
                self._log.error("%s; stopping all services", exc)
                status = 1
        self._log.info("all services stopped")
        return status

    # --- startup -------------------------------------------------------------------

    async def _start_all(self, services: contextlib.AsyncExitStack) -> None:
        config, options = self._config, self._options
        env = dict(self._env)
        # Unbuffered, so that children's logs reach a detached launcher's log file live.
        env.setdefault("PYTHONUNBUFFERED", "1")
        bus_url = config.bus.url
        self._bus_url = bus_url
        role_env: dict[str, dict[str, str]] = {"edge": {}, "actor": {}}
        if options.start_nats:
            # A locked-down bus: each process kind gets its own user and subjects,
            # with passwords made for this run only.
            passwords = new_passwords()
            role_env = {
                role: {"YAP_BUS_USER": role, "YAP_BUS_PASSWORD": passwords[role]}
                for role in ("edge", "actor")
            }
            self._observer = (passwords["observer"], "observer")
            self._replay_password = passwords["replay"]
            server = NatsServer.from_config(
                config.nats_server,
                ready_timeout_s=options.nats_ready_timeout_s,
                stop_timeout_s=options.stop_timeout_s,
                extra_config=authorization_config(passwords),
            )
            self._log.info("starting nats-server on port %d", server.port)
            await self._until(
                services.enter_async_context(server), what="nats-server", timeout_s=None
            )
            self._watch("nats-server", server.wait, server.pid)
            bus_url = server.url
            self._bus_url = bus_url
            env["YAP_NATS_URL"] = bus_url

        # One at a time, tool first; see the module docstring for why not together.
        kinds: list[ActorKind] = [k for k in ("tool", "chat") if getattr(config.models, k)]
        async with _ReadyHeartbeats(bus_url, config, self._observer) as heartbeats:
            for kind in kinds:
                child = self._child(
                    f"{kind} actor", [options.actors_module, kind], {**env, **role_env["actor"]}
                )
                await self._start_child(
                    services,
                    child,
                    heartbeats.wait(kind),
                    timeout_s=options.actor_ready_timeout_s,
                )

        edge = self._child("edge", [options.edge_module], {**env, **role_env["edge"]})
        await self._start_child(
            services, edge, self._edge_healthy(), timeout_s=options.edge_ready_timeout_s
        )

    def _child(self, name: str, module_args: list[str], env: Mapping[str, str]) -> ChildProcess:
        argv = [self._options.python, "-m", *module_args]
        if self._options.config_path is not None:
            argv += ["--config", self._options.config_path]
        return ChildProcess(
            name, argv, env=env, stop_timeout_s=self._options.stop_timeout_s, logger=self._log
        )

    async def _start_child(
        self,
        services: contextlib.AsyncExitStack,
        child: ChildProcess,
        ready: Awaitable[None],
        *,
        timeout_s: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            await services.enter_async_context(child)
        except BaseException:
            # The coroutine was never awaited; close it so Python does not warn.
            _close(ready)
            raise
        assert child.pid is not None
        self._log.info("starting %s (pid %d)", child.name, child.pid)
        self._watch(child.name, child.wait, child.pid)
        await self._until(ready, what=child.name, timeout_s=timeout_s)
        self._log.info("%s ready in %.1f s (pid %d)", child.name, loop.time() - began, child.pid)

    async def _edge_healthy(self) -> None:
        edge = self._config.edge
        # Polled: an HTTP endpoint has nothing to wait on.
        while True:
            if await http_status(edge.host, edge.port, "/healthz", timeout_s=1.0) == 200:
                return
            await asyncio.sleep(_EDGE_POLL_S)

    def _watch(self, name: str, wait: Callable[[], Awaitable[int]], pid: int | None) -> None:
        self._watched.append((name, wait))
        if pid is not None:
            self._pids[name] = pid

    # --- waiting -------------------------------------------------------------------

    async def _until(
        self, ready: Awaitable[object] | None, *, what: str, timeout_s: float | None
    ) -> None:
        """Wait for ``ready`` (None: forever) unless a stop or an exit comes first.

        Raises:
            _Stopped: a stop was requested first (during startup).
            ServiceExited: a started service exited first.
            StartupTimeout: ``timeout_s`` passed first.
        """
        waiters: dict[asyncio.Future[Any], str] = {asyncio.ensure_future(self._stop.wait()): _STOP}
        for name, wait in self._watched:
            waiters[asyncio.ensure_future(wait())] = name
        if ready is not None:
            ready_future = asyncio.ensure_future(ready)
            waiters[ready_future] = what
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for future in waiters:
                future.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if ready is not None and ready_future in done:
            ready_future.result()  # re-raises what the readiness check raised
            return
        if not done:
            raise StartupTimeout(f"{what} not ready after {timeout_s:.0f} s")
        # An exit wins over a stop request that came at the same time: it is news.
        for future in done:
            name = waiters[future]
            if name != _STOP:
                raise ServiceExited(name, future.result())
        if ready is None:
            return
        raise _Stopped


class _ReadyHeartbeats:
    """Listens to actor heartbeats and remembers which kinds have said ready."""

    def __init__(self, url: str, config: Config, observer: tuple[str, str] | None) -> None:
        self._url = url
        self._bus = config.bus
        # (password, user) of the observer role when the launcher made the bus.
        self._credentials = (
            (observer[1], observer[0]) if observer else (config.bus.user, config.bus.password)
        )
        self._codec = Codec()
        self._ready: dict[str, asyncio.Event] = {"tool": asyncio.Event(), "chat": asyncio.Event()}
        self._client: Client | None = None
        self._log = logging.getLogger("launcher")

    async def wait(self, kind: ActorKind) -> None:
        await self._ready[kind].wait()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            heartbeat = self._codec.decode_heartbeat(msg.data)
        except BusDecodeError as exc:
            self._log.warning("undecodable heartbeat on %s: %s", msg.subject, exc)
            return
        if heartbeat.ready:
            self._ready[heartbeat.kind].set()

    async def __aenter__(self) -> Self:
        try:
            self._client = await nats.connect(
                self._url,
                user=self._credentials[0],
                password=self._credentials[1],
                connect_timeout=self._bus.connect_timeout_s,
                reconnect_time_wait=self._bus.reconnect_wait_s,
            )
            await self._client.subscribe(ALL_HEARTBEATS, cb=self._on_heartbeat)
        except Exception as exc:
            if self._client is not None:
                await self._client.close()
            raise LauncherError(f"cannot listen for heartbeats on {self._url}: {exc!r}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()


def _close(awaitable: Awaitable[object]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()
