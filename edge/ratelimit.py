"""A token bucket per connection, for messages and for cancels."""

from __future__ import annotations

import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allows ``per_minute`` events a minute with bursts up to that many; 0 disables."""

    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._tokens = float(per_minute)
        self._stamp = time.monotonic()

    def allow(self, now: float | None = None) -> bool:
        if self._capacity <= 0:
            return True
        now = time.monotonic() if now is None else now
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
