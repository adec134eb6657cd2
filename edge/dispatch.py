"""The edge's one subscription to its sessions' events, dispatched by session id.

Every actor publishes a session's events to ``yap.edge.<this edge>.session.<sid>
.out.<actor>.<kind>``; the edge holds one wildcard subscription for all of them and
hands each event to the connection(s) on that session, from a dict, in the one
task nats-py runs for the subscription. That task takes what the subscription
holds without suspending (the handler does not wait on anything in the common
case), so a burst of events is one pass; when the pass is over the connections it
touched write their frames, together.

Before, each connection had a subscription of its own, with its own queue and
task: one task wake per connection per engine step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus import subjects
from bus.codec import BusDecodeError, Codec
from bus.events import ActorKind, Done, OutboundEvent
from edge.metrics import EdgeMetrics

__all__ = ["EventDispatcher", "EventSink"]


class EventSink(Protocol):
    """What the dispatcher delivers to: a client connection."""

    async def on_bus_event(self, sender: str, event: OutboundEvent) -> None:
        """One event of the sink's session, sent by actor ``sender``."""

    def flush(self) -> None:
        """The pass is over: write what the events produced."""


class EventDispatcher:
    def __init__(
        self,
        codec: Codec,
        metrics: EdgeMetrics,
        log: logging.Logger | logging.LoggerAdapter,
        *,
        on_done: Callable[[str, ActorKind], None] | None = None,
    ) -> None:
        self._codec = codec
        # Told of every leg's Done (the sender's id, the leg's kind): its actor has
        # room again, which admission wants to know before the next heartbeat.
        self._on_done = on_done
        self._metrics = metrics
        self._log = log
        # Usually one connection per session; a reconnecting client may briefly
        # have two, and both see the events (each keeps only its own turn's).
        self._routes: dict[str, list[EventSink]] = {}
        self._touched: dict[EventSink, None] = {}  # ordered, no duplicates
        self._subscription: Subscription | None = None

    def __len__(self) -> int:
        return len(self._routes)

    def attach(self, session_id: str, sink: EventSink) -> None:
        sinks = self._routes.setdefault(session_id, [])
        if sink not in sinks:
            sinks.append(sink)

    def detach(self, session_id: str, sink: EventSink) -> None:
        sinks = self._routes.get(session_id)
        if sinks is None:
            return
        if sink in sinks:
            sinks.remove(sink)
        if not sinks:
            del self._routes[session_id]
        self._touched.pop(sink, None)

    async def subscribe(self, nc: NatsClient, edge_id: str) -> None:
        self._subscription = await nc.subscribe(subjects.edge_outbox(edge_id), cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        try:
            await self._dispatch(msg)
        finally:
            subscription = self._subscription
            if subscription is None or subscription.pending_msgs == 0:
                self._flush()

    async def _dispatch(self, msg: Msg) -> None:
        route = subjects.parse_edge_out(msg.subject)
        if route is None:
            self._log.warning("dropped bus message on unexpected subject %s", msg.subject)
            self._metrics.bus_drops.inc()
            return
        session_id, sender, _ = route
        sinks = self._routes.get(session_id)
        if not sinks:
            return  # no connection here serves that session (any more)
        try:
            event = self._codec.decode_outbound(msg.data)
        except BusDecodeError as exc:
            self._log.warning("dropped malformed bus message on %s: %s", msg.subject, exc)
            self._metrics.bus_drops.inc()
            return
        if event.session_id != session_id:
            return  # the subject and the event disagree: trust neither
        if isinstance(event, Done) and self._on_done is not None:
            self._on_done(sender, event.kind)
        for sink in tuple(sinks):
            self._touched[sink] = None
            await sink.on_bus_event(sender, event)

    def _flush(self) -> None:
        touched = self._touched
        while touched:
            sink = next(iter(touched))
            del touched[sink]
            sink.flush()
