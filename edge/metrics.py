"""The edge's Prometheus metrics, in a registry of its own (no global state), and the
turn figures it reports in ``/status`` and its stats on the bus."""

from __future__ import annotations

from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["EdgeMetrics", "TurnStats"]

# Voice latencies live between a few ms and a few s.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class EdgeMetrics:
    def __init__(
        self,
        connections: Callable[[], int],
        actors_alive: Callable[[str], int],
        waiting: Callable[[str], int] = lambda kind: 0,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("yap_edge_connections", "Open WebSocket connections", registry=r).set_function(
            connections
        )
        alive = Gauge("yap_edge_actors_alive", "Actors heard from recently", ["kind"], registry=r)
        for kind in ("tool", "chat"):
            alive.labels(kind).set_function(lambda kind=kind: actors_alive(kind))
        queued = Gauge(
            "yap_edge_admission_waiting",
            "Legs waiting for an actor with room (every actor of the kind full)",
            ["kind"],
            registry=r,
        )
        for kind in ("tool", "chat"):
            queued.labels(kind).set_function(lambda kind=kind: waiting(kind))
        self.turns = Counter("yap_edge_turns", "Turns by outcome", ["outcome"], registry=r)
        self.ttft = Histogram(
            "yap_edge_ttft_seconds",
            "Start to first token frame",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.toolcall = Histogram(
            "yap_edge_toolcall_seconds",
            "Start to toolcall frame",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("yap_edge_token_frames", "Token frames sent", registry=r)
        self.cancels = Counter("yap_edge_cancels", "Turns cancelled", ["reason"], registry=r)
        self.errors = Counter("yap_edge_errors", "Error frames sent", ["code"], registry=r)
        self.bus_drops = Counter(
            "yap_edge_bus_dropped", "Bus messages dropped as malformed", registry=r
        )


@dataclass
class TurnStats:
    """Turn outcomes since start and the latest latencies (seconds), for /status and stats."""

    outcomes: Tally[str] = field(default_factory=Tally)
    recent_ttft: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    recent_toolcall: deque[float] = field(default_factory=lambda: deque(maxlen=256))
