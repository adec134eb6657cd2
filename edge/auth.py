"""API-key checks for WebSocket and HTTP requests, in constant time."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers

__all__ = ["is_authorized", "presented_key"]


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
