"""What a deployment runs on this host, worked out from the config before anything starts.

:func:`make_plan` turns a :class:`~configs.schema.Config` into slots: the nats-server
nodes, one slot per actor replica (``tool-0``, ``chat-0``, ``chat-1``...) and one
per edge process (``edge-0``...). A slot's name is the id of whatever runs in it and
stays the same across restarts, so sessions that remember their chat actor find it
again. The plan also lists every port the deployment will bind, for the preflight
check, and checks that the GPU shares of the replicas fit on their GPUs. It is pure:
no process, socket or file is touched, so all of it is unit-tested.

A slot may run with config overrides of its own (:data:`SlotOverrides`): two edges
of one bus that differ in ``models.concurrent_model_call`` and listen on their own
ports, say, or a chat replica on another model. Only the sections that one process
reads for itself may differ (:data:`SLOT_SECTIONS`); the replica layout, the bus and
the supervision are the deployment's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import msgspec

from configs.schema import Config
from launcher.errors import LauncherError

__all__ = [
    "SLOT_SECTIONS",
    "ActorKind",
    "ActorSlot",
    "EdgeSlot",
    "NodeSlot",
    "Plan",
    "PlanError",
    "PortClaim",
    "SlotOverrides",
    "gpu_shares",
    "make_plan",
    "parse_replicas",
    "with_cluster",
    "with_overrides",
    "with_replicas",
]

ActorKind = Literal["tool", "chat"]
ACTOR_KINDS: Final[tuple[ActorKind, ...]] = ("tool", "chat")
# The largest share of a GPU that replicas on it may claim together.
_GPU_FULL: Final = 1.0
_EPSILON: Final = 1e-9
_S = TypeVar("_S", bound=msgspec.Struct)

# Config section (dotted for nested tables: "chat.sampling") -> key -> value.
SlotOverrides = Mapping[str, Mapping[str, Any]]
# What one process reads for itself and may set apart from the other slots.
SLOT_SECTIONS: Final = frozenset({"edge", "models", "chat", "tool", "log"})


class PlanError(LauncherError):
    """The config asks for something that cannot run (GPU shares that do not fit...)."""


@dataclass(frozen=True, slots=True)
class PortClaim:
    """A TCP port the deployment will listen on, and how a user moves it."""

    host: str
    port: int
    what: str
    setting: str
    # Who binds it: a launcher that runs only some roles checks only theirs.
    role: Literal["nats", "actor", "edge", "launcher"] = "launcher"


@dataclass(frozen=True, slots=True)
class NodeSlot:
    """One nats-server node; ``index`` 0 alone when there is no cluster."""

    name: str
    index: int
    host: str
    port: int
    monitor_port: int
    cluster_port: int | None
    store_dir: Path


@dataclass(frozen=True, slots=True)
class ActorSlot:
    """One actor replica; ``name`` is its actor id (``chat-1``)."""

    name: str
    kind: ActorKind
    index: int
    # What this replica's process gets on top of the shared environment: the GPU it
    # may see, its share of that GPU and its metrics port.
    env: Mapping[str, str] = field(default_factory=dict)
    # Its own config on top of the deployment's (empty: it reads the shared file).
    overrides: SlotOverrides = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EdgeSlot:
    """One edge process; ``name`` is its edge id (``edge-0``)."""

    name: str
    index: int
    # The port it listens on: ``edge.port``, unless its overrides move it.
    port: int = 0
    overrides: SlotOverrides = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    nodes: tuple[NodeSlot, ...]
    actors: tuple[ActorSlot, ...]
    edges: tuple[EdgeSlot, ...]
    ports: tuple[PortClaim, ...]

    @property
    def clustered(self) -> bool:
        return len(self.nodes) > 1


def make_plan(
    config: Config,
    *,
    start_nats: bool = True,
    overrides: Mapping[str, SlotOverrides] | None = None,
) -> Plan:
    """The slots and ports of ``config`` on this host.

    Args:
        overrides: slot name -> that slot's own config changes (see
            :func:`with_overrides`).

    Raises:
        PlanError: the replicas' GPU shares do not fit (see :func:`gpu_shares`), or
            an override names no slot of the plan or does not make a valid config.
    """
    overrides = dict(overrides or {})
    gpu_shares(config, overrides)  # raises when they do not fit
    nodes = _nodes(config) if start_nats else ()
    actors = tuple(
        ActorSlot(
            name=f"{kind}-{index}",
            kind=kind,
            index=index,
            env=_actor_env(config, kind, index),
            overrides=overrides.get(f"{kind}-{index}", {}),
        )
        for kind in ACTOR_KINDS
        if getattr(config.models, kind)
        for index in range(_replicas(config, kind))
    )
    edges = tuple(
        EdgeSlot(
            name=f"edge-{index}",
            index=index,
            port=with_overrides(config, overrides.get(f"edge-{index}", {})).edge.port,
            overrides=overrides.get(f"edge-{index}", {}),
        )
        for index in range(config.edge.processes)
    )
    unknown = set(overrides) - {slot.name for slot in (*actors, *edges)}
    if unknown:
        raise PlanError(
            f"config overrides for {', '.join(sorted(unknown))}, which the plan does not "
            f"have (its slots: {', '.join(slot.name for slot in (*actors, *edges))})"
        )
    return Plan(nodes=nodes, actors=actors, edges=edges, ports=_ports(config, nodes, actors, edges))


def with_overrides(config: Config, overrides: SlotOverrides) -> Config:
    """``config`` with one slot's ``overrides`` merged in, checked as a whole again.

    ``{"models": {"concurrent_model_call": True}, "chat.sampling": {"ignore_eos": True}}``
    sets those keys and keeps the rest of each section.

    Raises:
        PlanError: a section outside :data:`SLOT_SECTIONS`, or a result the config's
            own checks refuse (an unknown key, a wrong type), naming the key.
    """
    if not overrides:
        return config
    data: dict[str, Any] = msgspec.to_builtins(config)
    for section, values in overrides.items():
        if section.split(".")[0] not in SLOT_SECTIONS:
            raise PlanError(
                f"a slot's config may override {', '.join(sorted(SLOT_SECTIONS))}, not "
                f"[{section}]: that is the whole deployment's"
            )
        node = data
        for part in section.split("."):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PlanError(f"[{section}] is not a table of the config")
            node = child
        node.update(values)
    return _convert(data, Config)


def _replicas(config: Config, kind: ActorKind) -> int:
    return int(getattr(config.actor, f"{kind}_replicas"))


def _nodes(config: Config) -> tuple[NodeSlot, ...]:
    server = config.nats_server
    store = Path(server.store_dir)
    if server.nodes == 1:
        # The same data dir as before clusters existed, so JetStream state is kept.
        return (
            NodeSlot("nats-server", 0, server.host, server.port, server.monitor_port, None, store),
        )

    def offset(port: int, index: int) -> int:
        return port + index if port else 0

    return tuple(
        NodeSlot(
            name=f"nats-{index}",
            index=index,
            host=server.host,
            port=offset(server.port, index),
            monitor_port=offset(server.monitor_port, index),
            cluster_port=offset(server.cluster_port, index),
            store_dir=store / f"node-{index}",
        )
        for index in range(server.nodes)
    )


def _metrics_port(config: Config, kind: ActorKind, index: int) -> int:
    base = int(getattr(config.actor, f"{kind}_metrics_port"))
    return base + index * config.actor.metrics_port_stride if base else 0


def _actor_env(config: Config, kind: ActorKind, index: int) -> dict[str, str]:
    actor = config.actor
    upper = kind.upper()
    env: dict[str, str] = {}
    gpus: tuple[str, ...] = getattr(actor, f"{kind}_gpus")
    fracs: tuple[float, ...] = getattr(actor, f"{kind}_gpu_fracs")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index]
    if fracs:
        env[f"{upper}_GPU_FRAC"] = repr(fracs[index])
    if index > 0 and _metrics_port(config, kind, index):
        env[f"{upper}_METRICS_PORT"] = str(_metrics_port(config, kind, index))
    return env


def _ports(
    config: Config,
    nodes: tuple[NodeSlot, ...],
    actors: tuple[ActorSlot, ...],
    edges: tuple[EdgeSlot, ...],
) -> tuple[PortClaim, ...]:
    claims: list[PortClaim] = []
    edge = config.edge
    # Edges on edge.port share it (SO_REUSEPORT): one claim. One that an override
    # moves claims its own.
    if edge.port and any(slot.port == edge.port for slot in edges):
        claims.append(PortClaim(edge.host, edge.port, "edge", "edge.port, --edge-port", "edge"))
    for slot in edges:
        if slot.port and slot.port != edge.port:
            host = with_overrides(config, slot.overrides).edge.host
            claims.append(
                PortClaim(host, slot.port, slot.name, f"{slot.name}'s edge.port override", "edge")
            )
    for node in nodes:
        suffix = "" if len(nodes) == 1 else f" + {node.index} (node {node.index})"
        if node.port:
            claims.append(
                PortClaim(
                    node.host,
                    node.port,
                    f"{node.name} clients",
                    f"nats_server.port{suffix}, --nats-port",
                    "nats",
                )
            )
        if node.monitor_port:
            claims.append(
                PortClaim(
                    node.host,
                    node.monitor_port,
                    f"{node.name} monitoring",
                    f"nats_server.monitor_port{suffix}, --nats-monitor-port",
                    "nats",
                )
            )
        if node.cluster_port:
            claims.append(
                PortClaim(
                    node.host,
                    node.cluster_port,
                    f"{node.name} cluster routes",
                    f"nats_server.cluster_port{suffix}",
                    "nats",
                )
            )
    for slot in actors:
        port = _metrics_port(config, slot.kind, slot.index)
        if port:
            suffix = "" if slot.index == 0 else f" + {slot.index} * actor.metrics_port_stride"
            claims.append(
                PortClaim(
                    config.actor.metrics_host,
                    port,
                    f"{slot.name} metrics",
                    f"actor.{slot.kind}_metrics_port{suffix} (0 turns it off)",
                    "actor",
                )
            )
    launcher = config.launcher
    if launcher.metrics_port:
        claims.append(
            PortClaim(
                launcher.metrics_host,
                launcher.metrics_port,
                "launcher metrics",
                "launcher.metrics_port (0 turns it off)",
            )
        )
    return tuple(claims)


def gpu_shares(
    config: Config, overrides: Mapping[str, SlotOverrides] | None = None
) -> dict[str, dict[str, float]]:
    """GPU -> {replica: share of that GPU's memory} for the vLLM replicas of ``config``.

    A replica without ``*_gpus`` sees what the environment gives it, counted as the
    GPU ``"default"``; a replica on ``"0,1"`` (tensor parallel) takes its share of both.
    A replica's own ``overrides`` (its backend, its ``gpu_frac``) count for it.

    Raises:
        PlanError: the shares on one GPU add up to more than the whole GPU.
    """
    shares: dict[str, dict[str, float]] = {}
    for kind in ACTOR_KINDS:
        if not getattr(config.models, kind):
            continue
        gpus: tuple[str, ...] = getattr(config.actor, f"{kind}_gpus")
        fracs: tuple[float, ...] = getattr(config.actor, f"{kind}_gpu_fracs")
        for index in range(_replicas(config, kind)):
            own = with_overrides(config, (overrides or {}).get(f"{kind}-{index}", {}))
            if getattr(own, kind).backend != "vllm":
                continue  # only vLLM claims a share of a GPU up front
            devices = gpus[index] if gpus else "default"
            frac = fracs[index] if fracs else own.gpu_frac(kind)
            for device in (d.strip() for d in devices.split(",")):
                shares.setdefault(device, {})[f"{kind}-{index}"] = frac
    for device, claims in shares.items():
        total = sum(claims.values())
        if total > _GPU_FULL + _EPSILON:
            parts = " + ".join(f"{name} {frac:.2f}" for name, frac in claims.items())
            where = "the default GPU" if device == "default" else f"GPU {device}"
            raise PlanError(
                f"the replicas on {where} claim more memory than it has: {parts} = "
                f"{total:.2f} > 1; lower actor.*_gpu_fracs or spread them with actor.*_gpus"
            )
    return shares


def parse_replicas(text: str) -> dict[ActorKind, int]:
    """``"chat=2,tool=1"`` -> ``{"chat": 2, "tool": 1}``.

    Raises:
        PlanError: a kind other than tool or chat, or a count that is not a number.
    """
    counts: dict[ActorKind, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kind, sep, count = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in ACTOR_KINDS or not count.strip().isdigit():
            raise PlanError(
                f"--replicas wants KIND=COUNT[,KIND=COUNT] with tool or chat, not {part!r}"
            )
        counts[kind] = int(count)  # type: ignore[index]
    return counts


def with_replicas(config: Config, counts: Mapping[ActorKind, int]) -> Config:
    """``config`` with these replica counts.

    Raises:
        PlanError: a count does not match a per-replica list (``actor.chat_gpus``).
    """
    actor = config.actor
    changes: dict[str, object] = {}
    for kind, count in counts.items():
        changes[f"{kind}_replicas"] = count
        for field_name in (f"{kind}_gpus", f"{kind}_gpu_fracs"):
            given = len(getattr(actor, field_name))
            if given not in (0, count):
                raise PlanError(
                    f"--replicas {kind}={count} does not match the {given} entries of "
                    f"actor.{field_name}; change both"
                )
    # Through convert, not replace: the struct's own checks run again.
    merged = {**msgspec.to_builtins(actor), **changes}
    return msgspec.structs.replace(config, actor=_convert(merged, type(actor)))


def with_cluster(config: Config, nodes: int) -> Config:
    """``config`` running ``nodes`` nats-server nodes on this host, the session bucket
    replicated on up to three of them (JetStream's usual replica count)."""
    server = _convert(
        {**msgspec.to_builtins(config.nats_server), "nodes": nodes}, type(config.nats_server)
    )
    edge = msgspec.structs.replace(config.edge, session_replicas=min(nodes, 3))
    return msgspec.structs.replace(config, nats_server=server, edge=edge)


def _convert(data: dict[str, object], struct: type[_S]) -> _S:
    try:
        return msgspec.convert(data, struct)
    except msgspec.ValidationError as exc:
        raise PlanError(str(exc)) from exc
