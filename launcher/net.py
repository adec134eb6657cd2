"""Small network helpers: free ports and a bare HTTP status probe.

The probe speaks just enough HTTP/1.1 to read a status line, so that the launcher
needs no HTTP client library to check ``/healthz`` endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping
from typing import Final

__all__ = ["connect_host", "free_port", "http_status"]

# Hosts that mean "every interface" when bound, but cannot be connected to as such.
_WILDCARDS: Final[Mapping[str, str]] = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def connect_host(host: str) -> str:
    """The address a local client should dial to reach a server bound to ``host``."""
    return _WILDCARDS.get(host, host)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now.

    The port is only likely to stay free: another process may take it before the
    caller binds it, so callers that can should retry on "address already in use".
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def http_status(host: str, port: int, path: str, *, timeout_s: float = 1.0) -> int | None:
    """The status code of ``GET path``, or None if nothing answered in time."""
    target = connect_host(host)
    authority = f"[{target}]:{port}" if ":" in target else f"{target}:{port}"
    request = f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(target, port)
            try:
                writer.write(request.encode("ascii"))
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
    parts = status_line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None
