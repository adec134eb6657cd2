"""How long to wait between reconnection attempts, within a total budget.

Voice cannot wait Pipecat's default 4-10 s: a user who barged in is still talking.
The first attempt goes at once (a cut socket usually reconnects straight away), the
next ones after 0.25 s, 0.5 s, 1 s, then every ``max_delay_s``. Each wait is drawn
from its upper half at random, so the many pipelines that one edge restart
disconnects do not all knock again at the same instant.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff", "ReconnectPolicy"]


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """The reconnect schedule of one turn.

    Args:
        first_delay_s: the wait before the second attempt (the first one is at once).
        max_delay_s: the longest wait between two attempts.
        budget_s: how long one turn keeps trying, from its first attempt.

    Raises:
        ValueError: a negative value, or ``first_delay_s`` above ``max_delay_s``.
    """

    first_delay_s: float = 0.25
    max_delay_s: float = 2.0
    budget_s: float = 15.0

    def __post_init__(self) -> None:
        if min(self.first_delay_s, self.max_delay_s, self.budget_s) < 0:
            raise ValueError("reconnect delays and budget must be >= 0")
        if self.first_delay_s > self.max_delay_s:
            raise ValueError("first_delay_s must not exceed max_delay_s")


class Backoff:
    """The waits of one reconnection: ask :meth:`next_delay` before each attempt."""

    def __init__(
        self,
        policy: ReconnectPolicy,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._rng = rng
        self._clock = clock
        self._deadline = clock() + policy.budget_s
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """How many attempts :meth:`next_delay` has allowed so far."""
        return self._attempts

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt; None once the budget is spent."""
        remaining = self._deadline - self._clock()
        if self._attempts == 0:
            self._attempts = 1
            return 0.0
        if remaining <= 0:
            return None
        policy = self._policy
        ceiling = min(policy.max_delay_s, policy.first_delay_s * 2 ** (self._attempts - 1))
        self._attempts += 1
        return min(ceiling * self._rng.uniform(0.5, 1.0), remaining)
