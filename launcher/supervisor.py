"""The launcher as a library: start nats-server, the actors and the edge, keep them up.

``async with Launcher(config, env, options) as launcher:`` checks every port, starts
the nats-server node(s), then the actor replicas one after the other, then the edge
processes, each ready before the next starts (GPU engines measure free memory when
they load, so two loading at once would both claim the same memory), and returns
once all serve. ``just up``, the end-to-end tests (``tests/support/system.py``) and
the benchmarks all run deployments through it.

While it runs, a service that dies is restarted after a backoff (see
:class:`~launcher.restarts.RestartPolicy`); the others keep serving. A service that
crashes ``launcher.max_crashes`` times within ``launcher.crash_window_s`` sets
:attr:`Launcher.gave_up`, and its owner stops everything. A service that fails during
the first start is a start failure: the context manager raises, nothing is retried.
Leaving the context stops everything in reverse order: edges, chat, tool, nats.

A benchmark can do more with one deployment: give slots config overrides of their
own (two edges on one bus in different modes), leave planned slots stopped at the
start (``deferred``) and start or stop them later, restart one slot on new
overrides (the chat replica on another model) while the rest keep running, and
admit a bus user of its own (a listener on the actors' done events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from bus.metrics_http import MetricsServer
from bus.permissions import OBSERVER, REPLAY, Role
from configs.loader import ENV_OVERRIDES
from configs.schema import Config
from launcher.errors import (
    LauncherError,
    NatsServerError,
    ServiceExited,
    StartupTimeout,
    describe_exit,
)
from launcher.identities import (
    BusCredentials,
    Identity,
    bus_authorization,
    identities,
    process_env,
)
from launcher.nats import ClusterSpec, NatsServer
from launcher.net import connect_host, free_port
from launcher.plan import Plan, PlanError, SlotOverrides, make_plan, with_overrides
from launcher.preflight import check_ports
from launcher.restarts import RestartPolicy
from launcher.services import (
    ChildService,
    Heartbeats,
    Host,
    NatsService,
    Service,
    ServiceStatus,
    edge_ready,
)
from launcher.status import BusAccess
from launcher.tomlfile import write_config

__all__ = ["LOCAL", "LaunchOptions", "Launcher", "Supervisor"]

LOCAL: Final = Host("local", "")
_STOP: Final = "stop requested"
_CONFIG_NAME: Final = "config.toml"


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    """How the launcher runs things; the config says what to run.

    Args:
        work_dir: where the run's effective config (0600) goes, and, with
            ``log_dir`` None, nothing else.
        log_dir: one ``<slot>.log`` per service (appended across restarts); None
            lets children write to the launcher's own stdout and stderr.
        start_nats: run nats-server from ``config.nats_server``; False uses the bus
            at ``config.bus`` as it is.
        run_actors, run_edges: start the actors, the edges (a benchmark may run
            the edge and restart the actors under it at other settings).
        python: the interpreter children run with.
        actors_module, edge_module: the ``python -m`` targets (tests swap in fakes).
        actor_ready_timeout_s: how long one actor may take to load its model.
        edge_ready_timeout_s: how long an edge may take to answer ``/healthz``.
        stop_timeout_s: SIGTERM grace per child before SIGKILL.
        hosts: slot name -> where it runs (network namespaces in the tests);
            absent slots run here.
        first_node: slot name -> the index of the nats node it dials first (a
            benchmark puts the edge and the actors on different nodes of a cluster,
            to measure the route hop); absent slots: their host's node.
        preflight: check every port of the plan before starting anything.
        seed: for the restart jitter (tests); None is random.
        overrides: slot name -> config overrides of that slot alone
            (:func:`~launcher.plan.with_overrides`); such a slot reads its own
            ``config.<slot>.toml`` beside the run's ``config.toml``.
        deferred: slots of the plan not started with the others; they have their
            bus users, and :meth:`Launcher.start_slot` starts one later.
        roles: bus users beside the plan's, for this run's own clients (a
            benchmark's listener); :meth:`Launcher.credentials` has their passwords.
    """

    work_dir: Path = Path(".yap/run")
    log_dir: Path | None = None
    start_nats: bool = True
    run_actors: bool = True
    run_edges: bool = True
    python: str = sys.executable
    actors_module: str = "actors"
    edge_module: str = "edge"
    actor_ready_timeout_s: float = 900.0
    edge_ready_timeout_s: float = 60.0
    nats_ready_timeout_s: float = 15.0
    stop_timeout_s: float = 10.0
    hosts: Mapping[str, Host] = field(default_factory=dict)
    first_node: Mapping[str, int] = field(default_factory=dict)
    preflight: bool = True
    seed: int | None = None
    overrides: Mapping[str, SlotOverrides] = field(default_factory=dict)
    deferred: frozenset[str] = frozenset()
    roles: tuple[Role, ...] = ()


class _Stopped(Exception):
    """A stop was requested while services were starting."""


class _LauncherMetrics:
    """The launcher's own Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "yap_launcher_restarts",
            "Restarts of a supervised service, by why its process ended.",
            ["service", "reason"],
            registry=self.registry,
        )
        self.up = Gauge(
            "yap_launcher_service_up",
            "1 while the service's current process is ready.",
            ["service"],
            registry=self.registry,
        )


class Launcher:
    """One deployment on this host, started, supervised and stopped as a unit.

    Args:
        config: the loaded config (env overrides and launcher flags applied).
        env: the environment children start from; config env overrides are
            removed from it, since the effective config file already holds them.
        options: see :class:`LaunchOptions`.
        logger: where one line per lifecycle event goes.
        on_change: called after every change of a service's state (``just status``).
    """

    def __init__(
        self,
        config: Config,
        env: Mapping[str, str],
        options: LaunchOptions,
        *,
        logger: logging.Logger | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.plan: Plan = make_plan(
            config, start_nats=options.start_nats, overrides=options.overrides
        )
        slots = {slot.name for slot in (*self.plan.actors, *self.plan.edges)}
        if not options.deferred <= slots:
            raise PlanError(
                f"deferred slots {', '.join(sorted(options.deferred - slots))} are not in the plan"
            )
        self._config = config
        # Each slot's overrides now: restart_slot() may change them.
        self._overrides: dict[str, SlotOverrides] = {
            name: values for name, values in options.overrides.items() if values
        }
        self._options = options
        self._log = logger or logging.getLogger("launcher")
        self._on_change = on_change
        self._rng = random.Random(options.seed)
        self._env = {k: v for k, v in env.items() if k not in ENV_OVERRIDES}
        # Unbuffered, so that children's logs reach a log file live.
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._stopping = False
        self.gave_up = asyncio.Event()
        self.failure: str | None = None
        self.metrics = _LauncherMetrics()
        self._nodes: list[NatsService] = []
        self._actors: list[ChildService] = []
        self._edges: list[ChildService] = []
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._started: list[Service] = []  # ready during startup: their exits abort it
        self._credentials: dict[str, BusCredentials] = {}
        self._heartbeats: Heartbeats | None = None
        self.effective_config = config
        self.config_path = options.work_dir.absolute() / _CONFIG_NAME

    # --- what runs -----------------------------------------------------------------

    @property
    def services(self) -> dict[str, Service]:
        """Every slot by name, in start order."""
        return {s.name: s for s in (*self._nodes, *self._actors, *self._edges)}

    def status(self) -> list[ServiceStatus]:
        return [service.status() for service in self.services.values()]

    @property
    def pids(self) -> dict[str, int]:
        """Pids of the services running now, by slot name."""
        return {n: s.pid for n, s in self.services.items() if s.pid is not None}

    @property
    def bus_urls(self) -> tuple[str, ...]:
        """Where the bus is, as the launcher's host reaches it."""
        return self.effective_config.bus.urls

    @property
    def observer_access(self) -> BusAccess:
        """How ``just status`` reaches this run's bus."""
        return self._access(OBSERVER)

    @property
    def replay_access(self) -> BusAccess:
        """How ``python -m replay`` reaches this run's bus: it reads the recordings."""
        return self._access(REPLAY)

    def _access(self, identity_id: str) -> BusAccess:
        """The bus as ``identity_id``, or with the config's credentials on a bus we
        did not start (whose users are not ours to make)."""
        own = self._credentials.get(identity_id)
        bus = self.effective_config.bus
        user, password = (own.user, own.password) if own else (bus.user, bus.password)
        urls = self.bus_urls
        return BusAccess(urls[0], user, password, servers=urls)

    def credentials(self, identity_id: str) -> BusCredentials | None:
        """The bus credentials the launcher made for a slot (None without its own bus)."""
        return self._credentials.get(identity_id)

    def edge_address(self, index: int = 0) -> tuple[str, int]:
        """(host, port) a local client dials to reach edge ``index``."""
        name = f"edge-{index}"
        edge = self.slot_config(name).edge
        return self._address(name, edge.host), edge.port

    def slot_config(self, name: str) -> Config:
        """The config slot ``name`` runs with: the run's, with its own overrides."""
        return with_overrides(self.effective_config, self._overrides.get(name, {}))

    def _config_path(self, name: str) -> Path:
        if name not in self._overrides:
            return self.config_path
        return self.config_path.with_name(f"config.{name}.toml")

    def request_stop(self) -> None:
        """Make a starting launcher stop what it started (``__aenter__`` returns early)."""
        self._stop.set()

    # --- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        try:
            await self._start_all()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._stopping = True
        for task in self._supervisors.values():
            task.cancel()
        await asyncio.gather(*self._supervisors.values(), return_exceptions=True)
        # Reverse order: nothing is left without what it talks to while it stops.
        for service in (*reversed(self._edges), *reversed(self._actors)):
            await self._stop_service(service)
        # The launcher's own bus client goes before the bus does.
        await self._stack.aclose()
        for node in reversed(self._nodes):
            await self._stop_service(node)
        if self.services:
            self._log.info("all services stopped")

    async def _stop_service(self, service: Service) -> None:
        try:
            await service.stop()
        except Exception as exc:  # stopping the others matters more than why
            self._log.warning("stopping %s failed: %r", service.name, exc)
        if service.state != "failed":
            service.state = "stopped"
        self.metrics.up.labels(service.name).set(0)
        self._changed()

    async def _start_all(self) -> None:
        config, options, plan = self._config, self._options, self.plan
        loop = asyncio.get_running_loop()
        began = loop.time()
        if options.preflight:
            # Only ports on this host: another host's ports are its own business.
            runs = {"launcher", *(["nats"] if options.start_nats else [])}
            runs |= {"actor"} if options.run_actors else set()
            runs |= {"edge"} if options.run_edges else set()
            check_ports(c for c in plan.ports if c.role in runs and c.role not in self._placed())
        authorization = ""
        if options.start_nats:
            # A locked-down bus: each process kind its own user and subjects, with
            # passwords made for this run only.
            authorization, self._credentials = bus_authorization(identities(plan), options.roles)
        self._nodes = self._make_nodes(authorization)
        if self._nodes:
            urls = tuple(node.server.url for node in self._nodes)
            # Across hosts each process keeps to its own host's node (see _servers_env).
            placed = any(node.name in options.hosts for node in plan.nodes)
            placed = placed or bool(options.first_node)
            bus = msgspec.structs.replace(
                config.bus,
                url=urls[0],
                servers=urls,
                prefer_first=config.bus.prefer_first or placed,
            )
            self.effective_config = msgspec.structs.replace(config, bus=bus)
        write_config(self.config_path, self.effective_config)
        for name in self._overrides:
            write_config(self._config_path(name), self.slot_config(name))
        if config.launcher.metrics_port:
            server = MetricsServer(
                self.metrics.registry, config.launcher.metrics_host, config.launcher.metrics_port
            )
            await self._stack.enter_async_context(server)
            self._log.info(
                "launcher metrics on http://%s:%d/metrics",
                config.launcher.metrics_host,
                server.port,
            )

        # Every node at once: a cluster node is healthy only once it sees the others.
        await self._until(
            asyncio.gather(*(self._start(node) for node in self._nodes)),
            what="nats-server",
            timeout_s=None,
        )
        for node in self._nodes:
            node.state = "ready"
            self._watch(node)

        observer = self._credentials.get("observer")
        bus = self.effective_config.bus
        self._heartbeats = await self._stack.enter_async_context(
            Heartbeats(
                self.bus_urls,
                observer.user if observer else bus.user,
                observer.password if observer else bus.password,
                connect_timeout_s=bus.connect_timeout_s,
                reconnect_wait_s=bus.reconnect_wait_s,
                logger=self._log,
            )
        )
        if options.run_actors:
            for slot in plan.actors:  # one at a time; see the module docstring
                actor = self._make_actor(slot.name, slot.kind, slot.env)
                self._actors.append(actor)
                if slot.name not in options.deferred:
                    await self._start_watched(actor, options.actor_ready_timeout_s)
        if options.run_edges:
            for edge_slot in plan.edges:
                edge = self._make_edge(edge_slot.name)
                self._edges.append(edge)
                if edge_slot.name not in options.deferred:
                    await self._start_watched(edge, options.edge_ready_timeout_s)
        self._log.info("all services ready in %.1f s", loop.time() - began)
        for service in (*self._actors, *self._edges, *self._nodes):
            if service.state == "ready":
                self._supervisors[service.name] = asyncio.create_task(self._supervise(service))

    async def _start_watched(self, service: Service, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await self._until(self._start(service), what=service.name, timeout_s=timeout_s)
        await self._until(service.until_ready(), what=service.name, timeout_s=timeout_s)
        service.state = "ready"
        self.metrics.up.labels(service.name).set(1)
        self._changed()
        self._watch(service)
        self._log.info(
            "%s ready in %.1f s (pid %s)", service.name, loop.time() - began, service.pid
        )

    # --- one slot at a time, while the rest keep running -----------------------------

    async def start_slot(self, name: str) -> None:
        """Start actor or edge slot ``name`` (deferred, or stopped by :meth:`stop_slot`)
        and supervise it from then on; returns once it is ready.

        Raises:
            LauncherError: no such slot, it runs already, or its process exited or
                was not ready within the role's timeout (it is left stopped).
        """
        service = self._child_slot(name)
        if name in self._supervisors or service.running:
            raise LauncherError(f"{name} is running already")
        code = await self._restart(service)
        if code is not None:
            service.exited(describe_exit(code))
            service.state = "failed"
            self._changed()
            raise ServiceExited(name, code)
        self._log.info("%s ready (started on request, pid %s)", name, service.pid)
        self._supervisors[name] = asyncio.create_task(self._supervise(service))

    async def stop_slot(self, name: str) -> None:
        """Stop slot ``name`` and leave it stopped (not a crash: nothing restarts it).

        Raises:
            LauncherError: no such actor or edge slot.
        """
        service = self._child_slot(name)
        task = self._supervisors.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._stop_service(service)
        self._log.info("%s stopped on request", name)

    async def restart_slot(self, name: str, overrides: SlotOverrides | None = None) -> None:
        """Stop slot ``name`` and start it again, with ``overrides`` merged into its own
        from now on (a chat replica on another model); returns once it is ready.

        Raises:
            PlanError: the overrides do not make a valid config, or they move a GPU
                share past what the GPU has.
            LauncherError: as :meth:`start_slot`.
        """
        service = self._child_slot(name)
        if overrides:
            merged = dict(self._overrides.get(name, {}))
            for section, values in overrides.items():
                merged[section] = {**merged.get(section, {}), **values}
            make_plan(
                self._config,
                start_nats=self._options.start_nats,
                overrides={**self._overrides, name: merged},
            )  # raises before anything is stopped
            self._overrides[name] = merged
            write_config(self._config_path(name), self.slot_config(name))
        await self.stop_slot(name)
        # The argv names the slot's config file, which it may have only now.
        fresh = self._remake(service)
        await self.start_slot(fresh.name)

    def _child_slot(self, name: str) -> ChildService:
        service = self.services.get(name)
        if not isinstance(service, ChildService):
            raise LauncherError(f"no actor or edge slot {name!r} in this run")
        return service

    def _remake(self, service: ChildService) -> ChildService:
        """A new service object for ``service``'s slot, built from its current config."""
        for group in (self._actors, self._edges):
            for position, current in enumerate(group):
                if current is service:
                    if service.role == "actor":
                        slot = next(a for a in self.plan.actors if a.name == service.name)
                        fresh = self._make_actor(slot.name, slot.kind, slot.env)
                    else:
                        fresh = self._make_edge(service.name)
                    fresh.restarts = service.restarts
                    fresh.last_exit, fresh.last_exit_at = service.last_exit, service.last_exit_at
                    fresh.state = service.state
                    group[position] = fresh
                    return fresh
        raise LauncherError(f"{service.name} is not a slot of this run")

    async def _start(self, service: Service) -> None:
        service.state = "starting"
        self._changed()
        await service.spawn()
        if isinstance(service, NatsService):
            self.metrics.up.labels(service.name).set(1)

    # --- building the services -------------------------------------------------------

    def _host(self, name: str) -> Host:
        return self._options.hosts.get(name, LOCAL)

    def _address(self, name: str, bound: str) -> str:
        host = self._host(name)
        return host.address if host is not LOCAL and host.address else connect_host(bound)

    def _placed(self) -> set[str]:
        """Roles with a slot on another host: their ports are that host's business."""
        names = set(self._options.hosts)
        plan = self.plan
        placed = {"nats"} if names & {n.name for n in plan.nodes} else set()
        placed |= {"actor"} if names & {a.name for a in plan.actors} else set()
        placed |= {"edge"} if names & {e.name for e in plan.edges} else set()
        return placed

    def _servers_env(self, name: str) -> dict[str, str]:
        """A slot on a host with a nats node dials that node first, then the others
        (or the node ``first_node`` names)."""
        host = self._host(name)
        first = self._options.first_node.get(name)
        if not self._nodes or (host is LOCAL and first is None):
            return {}
        if first is not None:
            local = [self._nodes[first].server.url]
        else:
            local = [n.server.url for n in self._nodes if self._host(n.name) == host]
        others = [n.server.url for n in self._nodes if n.server.url not in local]
        return {"YAP_NATS_SERVERS": ",".join(local + others)}

    def _make_nodes(self, authorization: str) -> list[NatsService]:
        options, plan = self._options, self.plan
        server = self._config.nats_server
        # As secret as the users' passwords: from the OS, not the seeded rng.
        route_password = secrets.token_urlsafe(24)
        hosts = {node.name: self._host(node.name) for node in plan.nodes}

        def bind(name: str, default: str) -> str:
            return hosts[name].address if hosts[name] is not LOCAL else default

        # Route ports must be known before any node starts: each lists the others'.
        route_ports = {
            node.name: node.cluster_port or free_port(bind(node.name, node.host))
            for node in plan.nodes
        }
        nodes: list[NatsService] = []
        for node in plan.nodes:
            cluster = None
            if plan.clustered:
                cluster = ClusterSpec(
                    name=server.cluster_name,
                    host=bind(node.name, node.host),
                    port=route_ports[node.name],
                    routes=tuple(
                        f"{connect_host(bind(other.name, other.host))}:{route_ports[other.name]}"
                        for other in plan.nodes
                        if other.index != node.index
                    ),
                    user="route",
                    password=route_password,
                )
            nats_server = NatsServer(
                node.store_dir,
                host=bind(node.name, node.host),
                port=node.port,
                monitor_port=node.monitor_port,
                extra_config=authorization,
                ready_timeout_s=options.nats_ready_timeout_s,
                stop_timeout_s=options.stop_timeout_s,
                logger=self._log,
                server_name=node.name if plan.clustered else None,
                cluster=cluster,
                exec_prefix=hosts[node.name].exec_prefix,
            )
            nodes.append(NatsService(nats_server, self._policy()))
        return nodes

    def _policy(self) -> RestartPolicy:
        return RestartPolicy(self._config.launcher, random.Random(self._rng.random()))

    def _child_env(self, identity: Identity, extra: Mapping[str, str]) -> dict[str, str]:
        return {
            **self._env,
            **self._servers_env(identity.id),
            **extra,
            **process_env(identity, self._credentials.get(identity.id)),
        }

    def _argv(self, name: str, *module_args: str) -> list[str]:
        config = str(self._config_path(name))
        return [self._options.python, "-m", *module_args, "--config", config]

    def _log_path(self, name: str) -> Path | None:
        log_dir = self._options.log_dir
        return log_dir / f"{name}.log" if log_dir is not None else None

    def _make_actor(self, name: str, kind: str, extra: Mapping[str, str]) -> ChildService:
        heartbeats = self._heartbeats
        assert heartbeats is not None

        async def ready(_child: Any) -> None:
            await heartbeats.until_ready(name)

        return ChildService(
            name,
            "actor",
            self._policy(),
            argv=self._argv(name, self._options.actors_module, kind),
            env=self._child_env(Identity("actor", name), extra),
            host=self._host(name),
            log_path=self._log_path(name),
            ready=ready,
            stop_timeout_s=self._options.stop_timeout_s,
            logger=self._log,
            on_spawn=lambda: heartbeats.forget(name),
        )

    def _make_edge(self, name: str) -> ChildService:
        own = with_overrides(self._config, self._overrides.get(name, {})).edge
        address = self._address(name, own.host)
        port = own.port

        async def ready(child: Any) -> None:
            await edge_ready(child, address, port)

        return ChildService(
            name,
            "edge",
            self._policy(),
            argv=self._argv(name, self._options.edge_module),
            env=self._child_env(Identity("edge", name), {}),
            host=self._host(name),
            log_path=self._log_path(name),
            ready=ready,
            stop_timeout_s=self._options.stop_timeout_s,
            logger=self._log,
        )

    # --- supervision ---------------------------------------------------------------

    def _watch(self, service: Service) -> None:
        """During startup, any started service exiting is a start failure."""
        self._started.append(service)

    async def _supervise(self, service: Service) -> None:
        """Restart ``service`` whenever its process ends, until stopped or given up."""
        loop = asyncio.get_running_loop()
        code = await service.wait_exit()
        while not self._stopping:
            reason = describe_exit(code)
            service.exited(reason)
            self.metrics.up.labels(service.name).set(0)
            record = service.policy.crashed(loop.time())
            if not self._config.launcher.restart or record.give_up:
                service.state = "failed"
                self._changed()
                window = self._config.launcher.crash_window_s
                self.failure = (
                    f"{service.name} exited ({reason}) and restarts are off"
                    if not self._config.launcher.restart
                    else f"{service.name} crashed {record.crashes_in_window} times within "
                    f"{window:.0f} s (last: {reason}); giving up"
                )
                self._log.error("%s", self.failure)
                self.gave_up.set()
                return
            delay_s = record.delay_s
            if service.role == "actor":
                # Not before every edge has declared the dead process lost: a new
                # process heartbeating under the same id would otherwise pass for
                # the old one, and the old one's turns would wait for a timeout.
                delay_s = max(delay_s, self._config.edge.actor_lost_after_s)
            service.state = "restarting"
            self._changed()
            self._log.warning(
                "%s exited unexpectedly (%s); restarting it in %.1f s (crash %d of %d allowed "
                "within %.0f s)",
                service.name,
                reason,
                delay_s,
                record.crashes_in_window,
                self._config.launcher.max_crashes,
                self._config.launcher.crash_window_s,
            )
            await asyncio.sleep(delay_s)
            service.restarts += 1
            self.metrics.restarts.labels(service.name, reason).inc()
            code = await self._restart(service)
            if code is not None:
                continue  # died (or hung) before it was ready: a crash like any other
            self._log.info("%s is back (restart %d)", service.name, service.restarts)
            code = await service.wait_exit()

    async def _restart(self, service: Service) -> int | None:
        """Start ``service`` again; None once ready, else how its attempt ended."""
        timeout_s = {
            "actor": self._options.actor_ready_timeout_s,
            "edge": self._options.edge_ready_timeout_s,
            "nats": self._options.nats_ready_timeout_s,
        }[service.role]
        try:
            await self._start(service)
        except NatsServerError as exc:
            self._log.warning("%s", exc)
            return -1 if not service.running else await service.wait_exit()
        ready = asyncio.ensure_future(service.until_ready())
        exited = asyncio.ensure_future(service.wait_exit())
        try:
            done, _ = await asyncio.wait(
                {ready, exited}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for future in (ready, exited):
                future.cancel()
            await asyncio.gather(ready, exited, return_exceptions=True)
        if ready in done and exited not in done:
            service.state = "ready"
            self.metrics.up.labels(service.name).set(1)
            self._changed()
            return None
        if exited in done:
            self._log.warning("%s died while starting", service.name)
            return exited.result()
        self._log.warning("%s not ready after %.0f s; killing it", service.name, timeout_s)
        await service.kill()
        return await service.wait_exit()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # --- waiting during startup ------------------------------------------------------

    async def _until(self, ready: Awaitable[object], *, what: str, timeout_s: float | None) -> None:
        """Wait for ``ready`` unless a stop or a started service's exit comes first.

        Raises:
            _Stopped: a stop was requested first.
            ServiceExited: a started service (or the one starting) exited first.
            StartupTimeout: ``timeout_s`` passed first.
        """
        waiters: dict[asyncio.Future[Any], str] = {asyncio.ensure_future(self._stop.wait()): _STOP}
        for service in self._started:
            waiters[asyncio.ensure_future(service.wait_exit())] = service.name
        ready_future = asyncio.ensure_future(ready)
        waiters[ready_future] = what
        starting = self.services.get(what)
        if starting is not None and starting not in self._started and starting.running:
            waiters[asyncio.ensure_future(starting.wait_exit())] = what
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for future in waiters:
                future.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if ready_future in done:
            ready_future.result()  # re-raises what the start raised
            return
        if not done:
            raise StartupTimeout(f"{what} not ready after {timeout_s:.0f} s")
        # An exit wins over a stop request that came at the same time: it is news.
        for future in done:
            name = waiters[future]
            if name != _STOP:
                raise ServiceExited(name, future.result())
        raise _Stopped


class Supervisor:
    """``just up`` in the foreground: run a :class:`Launcher` until a stop or a give-up.

    Args:
        config, env, options: for the :class:`Launcher`.
        on_ready: called once, when every service is ready.
        on_change: called after every change of a service's state.
        logger: where one line per lifecycle event goes.
    """

    def __init__(
        self,
        config: Config,
        env: Mapping[str, str],
        options: LaunchOptions,
        *,
        on_ready: Callable[[Launcher], None] | None = None,
        on_change: Callable[[Launcher], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._log = logger or logging.getLogger("launcher")
        self.launcher = Launcher(
            config,
            env,
            options,
            logger=self._log,
            on_change=(lambda: on_change(self.launcher)) if on_change else None,
        )
        self._on_ready = on_ready
        self._stop = asyncio.Event()

    @property
    def pids(self) -> dict[str, int]:
        return self.launcher.pids

    def request_stop(self) -> None:
        """Stop everything (in reverse order) and make :meth:`run` return; idempotent."""
        if not self._stop.is_set():
            self._log.info("stop requested")
            self._stop.set()
            self.launcher.request_stop()

    async def run(self) -> int:
        """Start everything, watch it, stop it; return the process exit status.

        0 after a requested stop; 1 when a service failed to start or a port was
        taken; 3 when a service crashed too often and the launcher gave up.
        """
        try:
            async with self.launcher as launcher:
                if self._on_ready is not None:
                    self._on_ready(launcher)
                stop = asyncio.ensure_future(self._stop.wait())
                gave_up = asyncio.ensure_future(launcher.gave_up.wait())
                try:
                    await asyncio.wait({stop, gave_up}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
                    gave_up.cancel()
                if launcher.gave_up.is_set():
                    self._log.error("stopping all services: %s", launcher.failure)
                    return 3
                self._log.info("stopping all services")
                return 0
        except _Stopped:
            self._log.info("stopped the services started so far")
            return 0
        except LauncherError as exc:
            # One line: what failed, where, and (for ports) what to change.
            started = any(s.state != "pending" for s in self.launcher.services.values())
            self._log.error("%s%s", exc, "; stopped everything" if started else "")
            return 1
