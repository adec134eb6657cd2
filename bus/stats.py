"""The one percentile every report uses: the edge's stats, the clients, the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["percentile"]


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100): always an observed value.

    Nearest rank rather than interpolation, so a p99 is a latency some turn really
    had, and two reports of one run agree on it.

    Raises:
        ValueError: ``values`` is empty or ``q`` is out of range.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile rank {q} is not in (0, 100]")
    rank = math.ceil(q / 100.0 * len(ordered))
    return ordered[max(rank, 1) - 1]
