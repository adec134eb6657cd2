"""What one edge process shares between its connections, built once in ``main()``."""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nats.aio.client import Client as NatsClient

from bus.codec import Codec
from configs.schema import Config
from edge.frames import FrameEncoder
from edge.metrics import EdgeMetrics
from edge.protocol import ClientProtocol
from edge.recorder import Recorder
from edge.registry import ActorRegistry
from edge.sessions import SessionStore

if TYPE_CHECKING:
    from edge.connection import ClientConnection

__all__ = ["EdgeState"]


@dataclass
class EdgeState:
    config: Config
    nc: NatsClient
    codec: Codec
    encoder: FrameEncoder
    protocol: ClientProtocol
    sessions: SessionStore
    registry: ActorRegistry
    metrics: EdgeMetrics
    recorder: Recorder = field(default_factory=Recorder.off)
    rng: random.Random = field(default_factory=random.Random)
    connections: set[ClientConnection] = field(default_factory=set)
    shutting_down: bool = False
    # Turn outcomes and error codes since start, for /status and logs.
    outcomes: Counter[str] = field(default_factory=Counter)
    # The latest latencies in seconds, for the stats the edge publishes.
    recent_ttft: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    recent_toolcall: deque[float] = field(default_factory=lambda: deque(maxlen=256))

    @property
    def at_capacity(self) -> bool:
        return len(self.connections) >= self.config.max_connections

    def capacity(self) -> dict[str, int | bool]:
        active = len(self.connections)
        limit = self.config.max_connections
        return {
            "active": active,
            "max": limit,
            "available": max(0, limit - active),
            "at_capacity": active >= limit,
        }

    def healthy(self) -> bool:
        if not self.nc.is_connected or self.shutting_down:
            return False
        models = self.config.models
        return (not models.tool or bool(self.registry.live("tool"))) and (
            not models.chat or bool(self.registry.live("chat"))
        )
