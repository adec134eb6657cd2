"""``just status``: a live table of the running system, read from the bus.

Actors' heartbeats and edges' stats are what the system says about itself, so the
table needs no log scraping and works against any deployment whose observer
credentials it has.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats

from bus import subjects
from bus.codec import BusDecodeError, Codec
from bus.events import EdgeStats, Heartbeat
from launcher.services import ServiceStatus

__all__ = [
    "REPLAY_ACCESS_FILE",
    "BusAccess",
    "Snapshot",
    "collect",
    "read_access",
    "read_services",
    "render",
    "render_services",
    "write_access",
    "write_services",
]

ACCESS_FILE = "bus.json"
# The replay user's (python -m replay reads it): it may read recordings and set sessions.
REPLAY_ACCESS_FILE = "replay.json"
SERVICES_FILE = "services.json"


class BusAccess(msgspec.Struct, frozen=True):
    url: str
    user: str | None = None
    password: str | None = None
    # Every node of a cluster; empty means just ``url``.
    servers: tuple[str, ...] = ()

    @property
    def urls(self) -> list[str]:
        return list(self.servers or (self.url,))


def write_access(run_dir: Path, access: BusAccess, name: str = ACCESS_FILE) -> Path:
    """Save how to reach the bus (as the observer, by default), readable by this user only."""
    path = run_dir / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(msgspec.json.encode(access))
    return path


def read_access(run_dir: Path) -> BusAccess | None:
    try:
        return msgspec.json.decode((run_dir / ACCESS_FILE).read_bytes(), type=BusAccess)
    except (OSError, msgspec.DecodeError):
        return None


def write_services(run_dir: Path, services: list[ServiceStatus]) -> Path:
    """Save the launcher's view of its services (state, restarts, last exit).

    Written to a temporary file and renamed, so a reader never sees half of it.
    """
    path = run_dir / SERVICES_FILE
    partial = path.with_suffix(".tmp")
    partial.write_bytes(msgspec.json.encode(services))
    os.replace(partial, path)
    return path


def read_services(run_dir: Path) -> list[ServiceStatus] | None:
    try:
        return msgspec.json.decode((run_dir / SERVICES_FILE).read_bytes(), type=list[ServiceStatus])
    except (OSError, msgspec.DecodeError):
        return None


def render_services(services: list[ServiceStatus]) -> str:
    """The launcher's table: each slot, its state, pid, restarts and how it last ended."""
    lines = [f"{'service':<14}{'state':<12}{'pid':>8}{'restarts':>10}  last exit"]
    for service in services:
        last = "-"
        if service.last_exit is not None:
            at = time.strftime("%H:%M:%S", time.localtime(service.last_exit_at or 0))
            last = f"{service.last_exit} at {at}"
        pid = str(service.pid) if service.pid is not None else "-"
        lines.append(f"{service.name:<14}{service.state:<12}{pid:>8}{service.restarts:>10}  {last}")
    return "\n".join(lines)


@dataclass
class Snapshot:
    actors: dict[str, Heartbeat] = field(default_factory=dict)
    edges: dict[str, EdgeStats] = field(default_factory=dict)
    taken_at: float = field(default_factory=time.time)


async def collect(access: BusAccess, window_s: float = 1.2) -> Snapshot:
    """Listen for ``window_s`` (longer than every sender's interval) and keep the latest."""
    codec = Codec()
    snapshot = Snapshot()
    nc = await nats.connect(
        servers=access.urls,
        user=access.user,
        password=access.password,
        connect_timeout=2,
        allow_reconnect=False,
    )
    try:

        async def on_heartbeat(msg) -> None:  # type: ignore[no-untyped-def]
            try:
                beat = codec.decode_heartbeat(msg.data)
            except BusDecodeError:
                return
            snapshot.actors[beat.actor_id] = beat

        async def on_stats(msg) -> None:  # type: ignore[no-untyped-def]
            try:
                stats = codec.decode_edge_stats(msg.data)
            except BusDecodeError:
                return
            snapshot.edges[stats.edge_id] = stats

        await nc.subscribe(subjects.ALL_HEARTBEATS, cb=on_heartbeat)
        await nc.subscribe(subjects.ALL_EDGE_STATS, cb=on_stats)
        await asyncio.sleep(window_s)  # a listening window, not synchronisation
    finally:
        await nc.close()
    snapshot.taken_at = time.time()
    return snapshot


def render(snapshot: Snapshot) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(snapshot.taken_at))
    lines = [f"yap-bus status at {stamp}", ""]
    lines.append(f"{'actor':<24}{'kind':<6}{'state':<10}{'running':>8}")
    if not snapshot.actors:
        lines.append("  (no actor heard)")
    for actor_id, beat in sorted(snapshot.actors.items()):
        state = "draining" if beat.draining else ("ready" if beat.ready else "loading")
        lines.append(f"{actor_id:<24}{beat.kind:<6}{state:<10}{beat.running:>8}")
    lines.append("")
    lines.append(
        f"{'edge':<18}{'conns':>7}{'turns':>7}{'ttft p50':>10}{'ttft p95':>10}"
        f"{'tool p50':>10}  outcomes"
    )
    if not snapshot.edges:
        lines.append("  (no edge heard)")
    for edge_id, stats in sorted(snapshot.edges.items()):
        conns = f"{stats.connections}/{stats.max_connections}"
        outcomes = json.dumps(stats.turns, sort_keys=True) if stats.turns else "-"
        lines.append(
            f"{edge_id:<18}{conns:>7}{stats.running_turns:>7}{stats.ttft_p50_ms:>8.1f}ms"
            f"{stats.ttft_p95_ms:>8.1f}ms{stats.toolcall_p50_ms:>8.1f}ms  {outcomes}"
        )
    return "\n".join(lines)
