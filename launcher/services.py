"""The services the launcher supervises: one object per slot, across its restarts.

A :class:`Service` is a slot (``nats-server``, ``tool-0``, ``chat-1``, ``edge-0``)
whose process may be replaced: :meth:`Service.spawn` starts a fresh process,
:meth:`Service.until_ready` waits for what "ready" means for that kind of service,
:meth:`Service.wait_exit` for the current process to end. The supervisor decides
when to do which; the slot keeps the counts that ``just status`` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Literal, Self

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.codec import BusDecodeError, Codec
from bus.subjects import ALL_HEARTBEATS
from launcher.errors import LauncherError
from launcher.nats import NatsServer
from launcher.net import http_status
from launcher.process import ChildProcess
from launcher.restarts import RestartPolicy

__all__ = [
    "ChildService",
    "Heartbeats",
    "Host",
    "NatsService",
    "Service",
    "ServiceRole",
    "ServiceState",
    "ServiceStatus",
    "edge_ready",
]

ServiceRole = Literal["nats", "actor", "edge"]
ServiceState = Literal["pending", "starting", "ready", "restarting", "stopped", "failed"]

_POLL_S: Final = 0.1
_LISTEN: Final = "0A"


@dataclass(frozen=True, slots=True)
class Host:
    """Where a service runs: this host, or another (a network namespace in the tests).

    Args:
        name: for logs ("local", "h1").
        address: the address others dial to reach services there.
        exec_prefix: argv put before every command run there (``ip netns exec h1``).
    """

    name: str
    address: str
    exec_prefix: tuple[str, ...] = ()


class ServiceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``just status``: a slot, its process, and how often it came back."""

    name: str
    role: ServiceRole
    state: ServiceState
    pid: int | None = None
    restarts: int = 0
    last_exit: str | None = None
    last_exit_at: float | None = None  # wall clock, for people


class Service:
    """A slot of the deployment; subclasses say how to spawn and when it is ready."""

    def __init__(self, name: str, role: ServiceRole, policy: RestartPolicy) -> None:
        self.name = name
        self.role = role
        self.policy = policy
        self.state: ServiceState = "pending"
        self.restarts = 0
        self.last_exit: str | None = None
        self.last_exit_at: float | None = None

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    async def spawn(self) -> None:
        """Start a fresh process (the previous one has exited)."""
        raise NotImplementedError

    async def until_ready(self) -> None:
        """Return once the current process serves; never returns if it does not."""
        raise NotImplementedError

    async def wait_exit(self) -> int:
        """The exit status of the current process, once it ends."""
        raise NotImplementedError

    async def stop(self) -> None:
        """SIGTERM, bounded wait, SIGKILL; a no-op when nothing runs."""
        raise NotImplementedError

    async def kill(self) -> None:
        """SIGKILL the current process (for fault tests and benchmarks)."""
        raise NotImplementedError

    def status(self) -> ServiceStatus:
        return ServiceStatus(
            name=self.name,
            role=self.role,
            state=self.state,
            pid=self.pid,
            restarts=self.restarts,
            last_exit=self.last_exit,
            last_exit_at=self.last_exit_at,
        )

    def exited(self, description: str) -> None:
        self.last_exit = description
        self.last_exit_at = time.time()


class NatsService(Service):
    """A nats-server node; ready when its ``/healthz`` is (``NatsServer.start`` waits)."""

    def __init__(self, server: NatsServer, policy: RestartPolicy) -> None:
        super().__init__(server.name, "nats", policy)
        self.server = server

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def running(self) -> bool:
        return self.server.running

    async def spawn(self) -> None:
        await self.server.start()

    async def until_ready(self) -> None:
        return None  # spawn() returned once healthy

    async def wait_exit(self) -> int:
        return await self.server.wait()

    async def stop(self) -> None:
        await self.server.stop()

    async def kill(self) -> None:
        await self.server.kill()


class ChildService(Service):
    """An actor or an edge: ``python -m ...`` with its own environment and log.

    Args:
        argv: the command line; run through ``host.exec_prefix``.
        env: the process's whole environment.
        log_path: where stdout and stderr go (appended across restarts); None
            inherits the launcher's.
        ready: given the running child, returns once it serves.
    """

    def __init__(
        self,
        name: str,
        role: ServiceRole,
        policy: RestartPolicy,
        *,
        argv: Sequence[str],
        env: Mapping[str, str],
        host: Host,
        log_path: Path | None,
        ready: Callable[[ChildProcess], Awaitable[None]],
        stop_timeout_s: float,
        logger: logging.Logger,
        on_spawn: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name, role, policy)
        self.host = host
        self._argv = (*host.exec_prefix, *argv)
        self._env = dict(env)
        self._log_path = log_path
        self._ready = ready
        self._stop_timeout_s = stop_timeout_s
        self._log = logger
        self._on_spawn = on_spawn
        self.child: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        child = self.child
        return child.pid if child is not None and child.running else None

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.running

    async def spawn(self) -> None:
        if self._on_spawn is not None:
            self._on_spawn()  # forget what the previous process said (heartbeats)
        log: IO[bytes] | None = None
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self._log_path.open("ab")
        try:
            child = ChildProcess(
                self.name,
                self._argv,
                env=self._env,
                stdout=log,
                stderr=log,
                stop_timeout_s=self._stop_timeout_s,
                logger=self._log,
            )
            await child.start()
        finally:
            if log is not None:
                log.close()  # the child has its own descriptor now
        self.child = child
        self._log.info("starting %s (pid %s)", self.name, child.pid)

    async def until_ready(self) -> None:
        assert self.child is not None
        await self._ready(self.child)

    async def wait_exit(self) -> int:
        assert self.child is not None
        return await self.child.wait()

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop()

    async def kill(self) -> None:
        if self.child is not None:
            await self.child.kill()


class Heartbeats:
    """Follows actor heartbeats; tells when the process in a slot has said ready.

    ``forget(actor_id)`` is called right before a slot's process is spawned, so only
    a heartbeat of the new process counts (the old one is dead by then). A heartbeat
    of the old process still on its way (one instance id per process start) is
    ignored, so a slot restarted on purpose cannot pass for ready too early.
    """

    def __init__(
        self,
        urls: Sequence[str],
        user: str | None,
        password: str | None,
        *,
        connect_timeout_s: float,
        reconnect_wait_s: float,
        logger: logging.Logger,
    ) -> None:
        self._urls = list(urls)
        self._user = user
        self._password = password
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_wait_s = reconnect_wait_s
        self._codec = Codec()
        self._ready: dict[str, asyncio.Event] = {}
        self._instances: dict[str, str] = {}  # actor id -> the last instance heard
        self._stale: dict[str, str] = {}  # actor id -> the instance forgotten
        self._client: Client | None = None
        self._log = logger

    def forget(self, actor_id: str) -> None:
        self._event(actor_id).clear()
        if instance := self._instances.get(actor_id):
            self._stale[actor_id] = instance

    async def until_ready(self, actor_id: str) -> None:
        await self._event(actor_id).wait()

    def _event(self, actor_id: str) -> asyncio.Event:
        return self._ready.setdefault(actor_id, asyncio.Event())

    async def _on_error(self, exc: Exception) -> None:
        # nats-py logs every reconnect attempt at ERROR otherwise; a restarting
        # nats-server is expected here, and reported by its own service.
        self._log.debug("launcher bus client: %r", exc)

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            heartbeat = self._codec.decode_heartbeat(msg.data)
        except BusDecodeError as exc:
            self._log.warning("undecodable heartbeat on %s: %s", msg.subject, exc)
            return
        actor_id, instance = heartbeat.actor_id, heartbeat.instance
        if instance and self._stale.get(actor_id) == instance:
            return  # the process this slot had before its restart
        if instance:
            self._instances[actor_id] = instance
        if heartbeat.ready and not heartbeat.draining:
            self._event(actor_id).set()

    async def __aenter__(self) -> Self:
        try:
            # Reconnects forever: a restarted nats-server must not blind the launcher.
            self._client = await nats.connect(
                servers=self._urls,
                user=self._user,
                password=self._password,
                name="yap-launcher",
                connect_timeout=self._connect_timeout_s,
                reconnect_time_wait=self._reconnect_wait_s,
                max_reconnect_attempts=-1,
                error_cb=self._on_error,
            )
            await self._client.subscribe(ALL_HEARTBEATS, cb=self._on_heartbeat)
            await self._client.flush()
        except Exception as exc:
            if self._client is not None:
                await self._client.close()
            raise LauncherError(f"cannot listen for heartbeats on the bus: {exc!r}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()


async def edge_ready(child: ChildProcess, address: str, port: int) -> None:
    """Until this edge process listens on ``port`` and ``/healthz`` there answers 200.

    Several edges share the port (SO_REUSEPORT), so the health answer may come from
    another of them: that this process holds a listening socket says it is its own
    turn to serve. Polled: neither the socket table nor HTTP can be waited on.
    """
    while True:
        listening = child.pid is None or _listens(child.pid, port) is not False
        if listening and await http_status(address, port, "/healthz", timeout_s=1.0) == 200:
            return
        await asyncio.sleep(_POLL_S)


def _listens(pid: int, port: int) -> bool | None:
    """Whether ``pid`` holds a TCP listener on ``port``; None where /proc cannot tell."""
    proc = Path("/proc") / str(pid)
    wanted = f"{port:04X}"
    inodes: set[str] = set()
    readable = False
    for table in ("tcp", "tcp6"):
        # The process's own network namespace, which may not be ours.
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == _LISTEN and fields[1].endswith(":" + wanted):
                    inodes.add(fields[9])
            readable = True
    if not readable:
        return None
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False
