"""The reconnect schedule: at once, then jittered doubling waits, within a budget."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("pipecat")

from integrations.pipecat.backoff import Backoff, ReconnectPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_attempt_is_immediate_then_waits_double_up_to_the_cap() -> None:
    """0, then up to 0.25, 0.5, 1, 2, 2 s, each at least half its ceiling."""
    clock = Clock()
    backoff = Backoff(ReconnectPolicy(), random.Random(1), clock)
    delays = [backoff.next_delay() for _ in range(6)]
    assert delays[0] == 0.0
    for delay, ceiling in zip(delays[1:], [0.25, 0.5, 1.0, 2.0, 2.0], strict=True):
        assert delay is not None and ceiling / 2 <= delay <= ceiling
    assert backoff.attempts == 6


def test_jitter_differs_between_clients() -> None:
    """Two pipelines cut at once do not knock again at the same instant."""
    a = Backoff(ReconnectPolicy(), random.Random(1), Clock())
    b = Backoff(ReconnectPolicy(), random.Random(2), Clock())
    assert [a.next_delay() for _ in range(4)] != [b.next_delay() for _ in range(4)]


def test_budget_ends_the_schedule() -> None:
    """Past the budget there is no next attempt; the last wait never overshoots it."""
    clock = Clock()
    backoff = Backoff(ReconnectPolicy(budget_s=1.0), random.Random(3), clock)
    assert backoff.next_delay() == 0.0
    clock.now += 0.9
    delay = backoff.next_delay()
    assert delay is not None and delay <= 0.1 + 1e-9
    clock.now += 0.2
    assert backoff.next_delay() is None


@pytest.mark.parametrize(
    "kwargs", [{"first_delay_s": -1}, {"budget_s": -1}, {"first_delay_s": 3, "max_delay_s": 2}]
)
def test_policy_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**kwargs)
