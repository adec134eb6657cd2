"""Connect to NATS the way every yap-bus process does: retry forever, reconnect forever.

``bus.servers`` lists the nodes of a NATS cluster: the client connects to any of
them and, when its node goes away, fails over to another (nats-py also learns the
cluster's other nodes from the server it reaches). ``bus.url`` alone is a
one-node list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import NoServersError

from bus import subjects
from configs.schema import BusConfig

__all__ = ["connect", "redact"]

_MAX_BACKOFF_S = 2.0


Hook = Callable[[], Awaitable[None]]


async def connect(
    config: BusConfig,
    name: str,
    log: logging.Logger,
    *,
    on_disconnect: Hook | None = None,
    on_reconnect: Hook | None = None,
    inbox_prefix: str = subjects.INBOX,
) -> NatsClient:
    """A connected client; waits (with backoff, forever) until the server is reachable.

    Once connected, nats-py reconnects on its own with no attempt limit, keeps
    subscriptions, and buffers publishes while the server is away. The hooks let a
    service end what cannot survive an outage (turns in flight) and announce itself
    again after one. ``inbox_prefix`` (``subjects.inbox_prefix(id)``) keeps this
    process's request replies under a prefix that its bus permission names alone.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("bus error: %r", exc)

    client: NatsClient | None = None

    async def on_disconnected() -> None:
        if client is not None and (client.is_closed or client.is_draining):
            return  # our own close, not an outage
        log.warning("bus disconnected; reconnecting")
        if on_disconnect is not None:
            await on_disconnect()

    async def on_reconnected() -> None:
        log.info("bus reconnected")
        if on_reconnect is not None:
            await on_reconnect()

    backoff = config.reconnect_wait_s
    while True:
        try:
            client = await nats.connect(
                servers=list(config.urls),
                dont_randomize=config.prefer_first,
                name=name,
                user=config.user,
                password=config.password,
                connect_timeout=config.connect_timeout_s,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=config.reconnect_wait_s,
                ping_interval=5,
                max_outstanding_pings=2,
                drain_timeout=config.drain_timeout_s,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                inbox_prefix=inbox_prefix,
            )
            return client
        except (NoServersError, OSError, TimeoutError) as exc:
            log.warning(
                "bus not reachable at %s (%r); retrying in %.2f s",
                ", ".join(redact(url) for url in config.urls),
                exc,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)


def redact(url: str) -> str:
    """A URL fit for logs: credentials removed."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
