"""An actor's Prometheus metrics, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bus.events import LegTiming

__all__ = ["ActorMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A stage of the wait for the first event is often well under a millisecond.
_STAGE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ActorMetrics:
    def __init__(
        self, kind: str, running_turns: Callable[[], int], engine_running: Callable[[], int]
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        labels = {"kind": kind}
        Gauge(
            "yap_actor_running_turns", "Turns this actor holds (its queue depth)", registry=r
        ).set_function(running_turns)
        Gauge(
            "yap_actor_engine_running", "Requests the engine is generating", registry=r
        ).set_function(engine_running)
        self.turns = Counter("yap_actor_turns", "Turns by outcome", ["kind", "outcome"], registry=r)
        self.first_output = Histogram(
            "yap_actor_first_output_seconds",
            "Turn start to the engine's first output",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(**labels)
        self._stages = Histogram(
            "yap_actor_stage_seconds",
            "A leg's wait for its first event, by stage (bus.events.LEG_STAGES, engine)",
            ["kind", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "yap_actor_token_events", "Token events published", ["kind"], registry=r
        ).labels(**labels)
        # Deltas from the engine; more than token events when deltas were merged.
        self.deltas = Counter(
            "yap_actor_token_deltas", "Token deltas the engine produced", ["kind"], registry=r
        ).labels(**labels)
        self.bus_drops = Counter(
            "yap_actor_bus_dropped", "Bus messages dropped as malformed", ["kind"], registry=r
        ).labels(**labels)
        self.kind = kind

    def observe_stages(self, timing: LegTiming) -> None:
        for stage, seconds in timing.stages().items():
            self._stages.labels(self.kind, stage).observe(seconds)
