"""What a client connection shares with the others of its edge, built once by the server.

Only services and shared figures: the server's own state (its connections,
whether it is shutting down, its capacity) stays in the server, which tells each
connection what it needs to know (``shutdown``, ``bus_lost``, ``check``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from configs.schema import Config
from edge.dispatch import EventDispatcher
from edge.frames import FrameEncoder
from edge.legs import LegClient
from edge.metrics import EdgeMetrics, TurnStats
from edge.protocol import ClientProtocol
from edge.recorder import Recorder
from edge.sessions import SessionStore

__all__ = ["EdgeContext"]


@dataclass(frozen=True, eq=False)
class EdgeContext:
    config: Config
    encoder: FrameEncoder
    protocol: ClientProtocol
    sessions: SessionStore
    legs: LegClient
    dispatcher: EventDispatcher
    metrics: EdgeMetrics
    stats: TurnStats
    recorder: Recorder
    rng: random.Random = field(default_factory=random.Random)
