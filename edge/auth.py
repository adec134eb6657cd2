"""API-key checks for WebSocket and HTTP requests, in constant time."""

from __future__ import annotations

import hmac
import time
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers

__all__ = ["AuthThrottle", "is_authorized", "presented_key"]


def presented_key(path: str, headers: Headers) -> str | None:
    """The key a client offers: ``api_key`` query, ``X-API-Key`` or ``Authorization: Bearer``."""
    query = parse_qs(urlsplit(path).query)
    if values := query.get("api_key"):
        return values[0]
    if key := headers.get("X-API-Key"):
        return key
    authorization = headers.get("Authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    return None


def is_authorized(path: str, headers: Headers, expected: str) -> bool:
    key = presented_key(path, headers)
    if key is None:
        return False
    return hmac.compare_digest(key.encode(), expected.encode())


class AuthThrottle:
    """Refuses a client address for a while after too many failed keys.

    Guessing keys costs a handshake each; after ``max_failures`` within
    ``window_s`` the address gets HTTP 429 until the window has passed.
    """

    def __init__(self, *, max_failures: int, window_s: float, max_tracked: int = 10_000) -> None:
        self._max_failures = max_failures
        self._window_s = window_s
        self._max_tracked = max_tracked
        self._failures: dict[str, list[float]] = {}

    def blocked(self, address: str, now: float | None = None) -> bool:
        if self._max_failures <= 0:
            return False
        stamps = self._recent(address, time.monotonic() if now is None else now)
        return len(stamps) >= self._max_failures

    def record_failure(self, address: str, now: float | None = None) -> None:
        if self._max_failures <= 0:
            return
        now = time.monotonic() if now is None else now
        if len(self._failures) >= self._max_tracked and address not in self._failures:
            self._failures.pop(next(iter(self._failures)))  # forget the oldest address
        self._recent(address, now).append(now)

    def _recent(self, address: str, now: float) -> list[float]:
        stamps = [t for t in self._failures.get(address, ()) if now - t < self._window_s]
        self._failures[address] = stamps
        return stamps
