"""What passes between the orchestrator and the load client: phases and results."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from clients.metrics import summarize

__all__ = [
    "ABORT_LOG_GRACE_S",
    "API_KEY",
    "CANCEL",
    "DELIVERED_SHARE",
    "LADDER_FAILURES",
    "P99_BOUND_MS",
    "READY_TIMEOUT_S",
    "STAMP",
    "TARGET_CANCEL_P99_MS",
    "TARGET_SESSIONS",
    "TARGET_TOKENS_PER_S",
    "TARGET_TTFT_P50_MS",
    "TARGET_TTFT_P99_MS",
    "TURN_TIMEOUT_S",
    "PhaseResult",
    "PhaseSpec",
    "Settings",
    "Side",
    "dist",
]

Side = Literal["bus", "direct"]

API_KEY: Final = "overhead-bench"
STAMP: Final = re.compile(r"@(\d+)")
P99_BOUND_MS: Final = 5.0
DELIVERED_SHARE: Final = 0.9
LADDER_FAILURES: Final = 2
TURN_TIMEOUT_S: Final = 30.0
READY_TIMEOUT_S: Final = 60.0
ABORT_LOG_GRACE_S: Final = 0.3
# What the issue asks of this machine (bus side, or bus minus direct where "added").
TARGET_TTFT_P50_MS: Final = 0.5
TARGET_TTFT_P99_MS: Final = 2.0
TARGET_CANCEL_P99_MS: Final = 2.0
TARGET_TOKENS_PER_S: Final = 50_000
TARGET_SESSIONS: Final = 16

# --- what passes between the orchestrator and the client process --------------------


class PhaseSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One load phase: ``sessions`` connections to ``url`` for ``warmup_s + duration_s``."""

    name: str
    side: Side
    deploy: str
    url: str
    sessions: int
    tokens: int
    rate: float
    warmup_s: float
    duration_s: float
    cancel_every: int
    cancel_after: int
    # Engine steps before the first chat token: 1, or 2 with a tool leg before chat.
    engine_steps: int
    compression: bool
    abort_log: str | None
    pids: dict[str, int]
    out: str


class PhaseResult(msgspec.Struct, kw_only=True):
    """A phase's outcome; distributions in ms (``count``, ``p50``, ``p95``, ``p99``...)."""

    name: str
    side: Side
    deploy: str
    sessions: int
    tokens: int
    rate: float
    window_s: float
    turns: int = 0
    cancels: int = 0
    cancels_late: int = 0
    errors: dict[str, int] = {}
    tokens_received: int = 0
    token_frames: int = 0
    tokens_per_s: float = 0.0
    ttft_ms: dict[str, float] | None = None
    ttft_excess_ms: dict[str, float] | None = None
    first_emit_ms: dict[str, float] | None = None
    one_way_ms: dict[str, float] | None = None
    engine_lag_ms: dict[str, float] | None = None
    cancel_to_abort_ms: dict[str, float] | None = None
    cancel_to_done_ms: dict[str, float] | None = None
    cpu_percent: dict[str, float] = {}
    attempts: int = 1

    @property
    def offered_tokens_per_s(self) -> float:
        return self.sessions * self.rate

    def cpu_of(self, process: str) -> float | None:
        """Percent of a core ``process`` used: all its processes (``edge``, ``edge-1``)."""
        parts = [
            v for k, v in self.cpu_percent.items() if k == process or k.startswith(f"{process}-")
        ]
        return sum(parts) if parts else None

    def cpu_us_per_token(self, process: str) -> float | None:
        """CPU microseconds ``process`` (all of its processes) spent per token delivered
        in the window."""
        percent = self.cpu_of(process)
        if percent is None or self.tokens_per_s <= 0:
            return None
        return round(percent / 100.0 / self.tokens_per_s * 1e6, 1)


def dist(values_ns: Sequence[int]) -> dict[str, float] | None:
    summary = summarize([v / 1e6 for v in values_ns])
    return None if summary is None else summary.as_dict(digits=3)


CANCEL: Final = json.dumps({"type": "cancel"})

# --- phases and the sweep ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    concurrency: tuple[int, ...]
    tokens: int
    rate: float
    duration_s: float
    warmup_s: float
    cancel_every: int
    cancel_after: int
    tput_sessions: int
    tput_tokens: int
    tput_rates: tuple[float, ...]
    both_concurrency: int
    log_level: str
    compression: bool
    stream_flush_ms: float
    profile_dir: str | None
    profile_concurrency: int
    max_foreign: float
    retries: int
    quiet_wait_s: float
    # Chat actor replicas on the bus side (bench.scaleout compares 1 and 2).
    chat_replicas: int = 1
    # The bus side's edge records every session to JetStream ([recording]): what
    # recording costs on the token path.
    recording: bool = False
    # Edge processes on the bus side's port (SO_REUSEPORT, edge.processes): the
    # first count runs everything; each further one runs the throughput ladder again.
    edges: tuple[int, ...] = (1,)
