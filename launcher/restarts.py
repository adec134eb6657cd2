"""When to restart a crashed service, and when to stop trying.

Sans-I/O: the caller passes the time in, and the random source is an object of the
caller's, so the schedule is unit-tested without waiting for it.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from configs.schema import LauncherConfig

__all__ = ["CrashRecord", "RestartPolicy"]


@dataclass(frozen=True, slots=True)
class CrashRecord:
    """What the policy says about one crash."""

    crashes_in_window: int
    give_up: bool
    delay_s: float


class RestartPolicy:
    """Exponential backoff with jitter, and a crash budget per window, for one service.

    The n-th consecutive crash waits ``initial * 2**(n-1)`` seconds (capped at
    ``backoff_max_s``), moved by up to ``backoff_jitter`` of itself either way. A
    service that stayed up for a whole window after its last crash starts again from
    the initial delay. ``max_crashes`` crashes within ``crash_window_s`` give up.
    """

    def __init__(self, config: LauncherConfig, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self._crashes: deque[float] = deque()
        self._streak = 0

    def crashed(self, now: float) -> CrashRecord:
        config = self._config
        window = config.crash_window_s
        if self._crashes and now - self._crashes[-1] > window:
            self._streak = 0  # it ran a whole window: a fresh start
        while self._crashes and now - self._crashes[0] > window:
            self._crashes.popleft()
        self._crashes.append(now)
        self._streak += 1
        base = min(config.backoff_initial_s * 2 ** (self._streak - 1), config.backoff_max_s)
        jitter = config.backoff_jitter
        delay = base * (1.0 + self._rng.uniform(-jitter, jitter))
        count = len(self._crashes)
        return CrashRecord(
            crashes_in_window=count, give_up=count >= config.max_crashes, delay_s=delay
        )
