"""The shared percentile."""

from __future__ import annotations

import pytest

from bus.stats import percentile


def test_percentile_nearest_rank() -> None:
    """Percentiles are nearest-rank: always one of the values."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_bad_input() -> None:
    """No values or a rank outside (0, 100] is an error."""
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 0)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_percentile_takes_any_iterable() -> None:
    """A deque or a generator works as well as a list (the edge passes a deque)."""
    assert percentile((v for v in (5.0, 1.0, 3.0)), 100) == 5.0
