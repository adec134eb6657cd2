"""API-key checks for WebSocket and HTTP requests, in constant time; the client's
real address behind trusted proxies; the throttle on failed keys."""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers

__all__ = [
    "AuthThrottle",
    "Network",
    "client_address",
    "is_authorized",
    "parse_networks",
    "presented_key",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """``edge.trusted_proxies``: addresses or CIDR blocks.

    Raises:
        ValueError: one of them is neither.
    """
    return tuple(ipaddress.ip_network(spec.strip(), strict=False) for spec in specs)


def client_address(peer: str, headers: Headers, trusted: tuple[Network, ...]) -> str:
    """The address of the client behind ``peer``.

    The TCP peer, unless it is a trusted proxy: then ``X-Forwarded-For`` is read
    from the right (each proxy appends the address it saw), skipping trusted
    proxies, and the first address that is not one is the client. Without trusted
    proxies (the default) the header is ignored: anyone can write it.
    """
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for value in headers.get_all("X-Forwarded-For") for hop in value.split(",")]
    for hop in reversed(hops):
        if not hop:
            continue
        if not _trusted(hop, trusted):
            return hop
    return peer  # the proxies named no one else: the last proxy is the client


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class AuthThrottle:
    """Refuses a client address for a while after too many failed keys.

    After ``max_failures`` wrong or missing keys within ``window_s`` an address gets
    HTTP 429, before any WebSocket handshake, until the window has passed. The edge
    asks only about requests whose key is wrong: a client with the right key is
    never refused, even from a blocked address (one bad client behind a NAT must
    not lock out the others behind it).
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
