"""The edge's I/O shell: HTTP routes, the WebSocket handshake gate, shutdown.

``EdgeServer`` is an async context manager: entering connects to the bus (with this
edge's own inbox prefix), subscribes once to its sessions' events, follows actor
heartbeats and starts listening (with ``SO_REUSEPORT`` when ``edge.processes`` edges
share the port); leaving stops accepting, lets running turns finish for a bounded
time, closes clients with 1001 and drains the bus connection.

The server owns what is the edge's as a whole: its connections, the capacity it
shares with the other edges of the host (``edge.capacity``), whether it is shutting
down, and one ticker that checks every running turn's deadlines and actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import logging
import time
import uuid
from collections.abc import Collection
from types import TracebackType

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from bus import codes, subjects
from bus.codec import BusDecodeError, Codec
from bus.connect import connect
from bus.events import EdgeStats
from bus.permissions import SESSIONS_KV
from bus.stats import percentile
from configs.schema import Config
from edge import frames
from edge.admission import Admission
from edge.auth import AuthThrottle, client_address, is_authorized, parse_networks
from edge.capacity import ConnectionSlots, open_slots
from edge.connection import ClientConnection
from edge.context import EdgeContext
from edge.dispatch import EventDispatcher
from edge.frames import FrameEncoder
from edge.legs import LegClient
from edge.metrics import EdgeMetrics, TurnStats
from edge.protocol import ClientProtocol, ProtocolLimits
from edge.recorder import Recorder
from edge.registry import ActorRegistry
from edge.sessions import KvSessionStore, MemorySessionStore, SessionStore

__all__ = ["WS_PATH", "EdgeServer"]

WS_PATH = "/ws"
STATS_INTERVAL_S = 1.0
SESSIONS_BUCKET = SESSIONS_KV
TICK_S = 0.1  # how often running turns' deadlines and actors are checked


class EdgeServer:
    """One edge process.

    Args:
        config: the deployment.
        log: where the edge logs.
        edge_id: this edge's id on the bus (its subjects, inbox and bus user);
            default a random ``edge-<hex>``.
    """

    def __init__(self, config: Config, log: logging.Logger, *, edge_id: str | None = None) -> None:
        self._config = config
        self._log = log
        self.edge_id = subjects.validate_id(edge_id or f"edge-{uuid.uuid4().hex[:10]}")
        self.connections: set[ClientConnection] = set()
        self.registry = ActorRegistry(lost_after_s=config.edge.actor_lost_after_s)
        self.stats = TurnStats()
        self._context: EdgeContext | None = None
        self._nc: NatsClient | None = None
        self._recorder: Recorder | None = None
        self._slots: ConnectionSlots | None = None
        self._server: Server | None = None
        self._shutting_down = False
        self._conn_ids = itertools.count(1)
        self._background: list[asyncio.Task[None]] = []
        self._trusted = parse_networks(config.edge.trusted_proxies)
        self._throttle = AuthThrottle(
            max_failures=config.edge.auth_max_failures,
            window_s=config.edge.auth_failure_window_s,
        )

    @property
    def context(self) -> EdgeContext:
        assert self._context is not None, "EdgeServer is not running"
        return self._context

    @property
    def sessions(self) -> SessionStore:
        return self.context.sessions

    @property
    def nc(self) -> NatsClient:
        assert self._nc is not None, "EdgeServer is not running"
        return self._nc

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> EdgeServer:
        config = self._config
        edge = config.edge
        nc = self._nc = await connect(
            config.bus,
            name=f"yap-{self.edge_id}",
            log=self._log,
            on_disconnect=self._on_bus_lost,
            inbox_prefix=subjects.inbox_prefix(self.edge_id),
        )
        codec = Codec()
        registry = self.registry
        admission = Admission(max_waiting=edge.admission_queue, wait_s=edge.admission_timeout_s)
        metrics = EdgeMetrics(
            connections=lambda: len(self.connections),
            actors_alive=lambda kind: len(registry.live(kind)),  # type: ignore[arg-type]
            waiting=lambda kind: admission.waiting(kind),  # type: ignore[arg-type]
        )
        recorder = self._recorder = Recorder(config, nc, self.edge_id, self._log)
        await recorder.start()
        legs = LegClient(
            nc,
            codec,
            registry,
            edge_id=self.edge_id,
            start_timeout_s=edge.start_timeout_s,
            warm_timeout_s=max(edge.event_timeout_s, 1.0),
            log=self._log,
            recorder=recorder,
            admission=admission,
            affine=edge.chat_routing == "affine",
        )
        dispatcher = EventDispatcher(codec, metrics, self._log, on_done=legs.leg_ended)
        self._context = EdgeContext(
            config=config,
            encoder=FrameEncoder(),
            protocol=ClientProtocol(
                ProtocolLimits(
                    max_utterance_chars=edge.max_utterance_chars,
                    max_history_chars=edge.max_history_chars,
                    max_persona_chars=edge.max_persona_chars,
                )
            ),
            sessions=await self._session_store(nc),
            legs=legs,
            dispatcher=dispatcher,
            metrics=metrics,
            stats=self.stats,
            recorder=recorder,
        )
        self._codec = codec
        self._slots = open_slots(
            config.max_connections, processes=edge.processes, path=edge.slots_path
        )
        await dispatcher.subscribe(nc, self.edge_id)
        await nc.subscribe(subjects.ALL_HEARTBEATS, cb=self._on_heartbeat)
        self._server = await serve(
            self._handle,
            edge.host,
            edge.port,
            process_request=self._process_request,
            max_size=edge.max_frame_bytes,
            origins=[*edge.allowed_origins, None] if edge.allowed_origins else None,
            server_header="yap-bus",
            # Token frames are a few bytes: deflate costs ~25% of the edge's CPU per
            # token (bench.overhead, py-spy) and saves next to nothing.
            compression=None,
            # N edge processes on one port: the kernel spreads connections over them.
            reuse_port=edge.processes > 1,
        )
        # Owned: cancelled and awaited in __aexit__. Started once listening, so an
        # edge's first stats on the bus also say that it takes connections.
        self._background = [
            asyncio.create_task(self._publish_stats()),
            asyncio.create_task(self._watch_turns()),
        ]
        self._log.info(
            "edge %s ready on ws://%s:%d%s (deploy=%s, max connections %d%s)",
            self.edge_id,
            edge.host,
            self.port,
            WS_PATH,
            config.models.deploy,
            config.max_connections,
            f" across {edge.processes} edge processes" if edge.processes > 1 else "",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        nc, server = self._nc, self._server
        if nc is None or server is None:
            return
        self._shutting_down = True
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        timeout_s = self._config.edge.shutdown_timeout_s
        self._log.info(
            "edge stopping: %d connection(s), waiting up to %.0f s for turns",
            len(self.connections),
            timeout_s,
        )
        server.close(close_connections=False)
        async with asyncio.TaskGroup() as group:
            for connection in list(self.connections):
                group.create_task(connection.shutdown(timeout_s))
        try:
            async with asyncio.timeout(timeout_s):
                await server.wait_closed()
        except TimeoutError:
            self._log.warning("connections still open after %.0f s; dropping them", timeout_s)
        if self._recorder is not None:
            await self._recorder.close()  # the last records go out before the drain
        try:
            await nc.drain()
        except Exception as exc:
            self._log.warning("bus drain failed: %r", exc)
        if self._slots is not None:
            self._slots.close()
        self._log.info("edge stopped")

    def capacity(self) -> dict[str, int | bool]:
        """Connections against the limit, for the whole host (every edge sharing it)."""
        assert self._slots is not None
        active = self._slots.active()
        limit = self._slots.limit
        return {
            "active": active,
            "max": limit,
            "available": max(0, limit - active),
            "at_capacity": active >= limit,
        }

    def healthy(self) -> bool:
        if self._nc is None or not self._nc.is_connected or self._shutting_down:
            return False
        models = self._config.models
        return (not models.tool or bool(self.registry.live("tool"))) and (
            not models.chat or bool(self.registry.live("chat"))
        )

    # --- HTTP -----------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            healthy = self.healthy()
            return _json(
                connection,
                http.HTTPStatus.OK if healthy else http.HTTPStatus.SERVICE_UNAVAILABLE,
                {"status": "ok" if healthy else "unavailable"},
            )
        if path not in ("/status", "/metrics", WS_PATH):
            return _json(connection, http.HTTPStatus.NOT_FOUND, {"error": "not found"})
        if not is_authorized(request.path, request.headers, self._config.edge.api_key):
            # The throttle judges wrong keys only: the right key is never refused.
            address = client_address(_peer_host(connection), request.headers, self._trusted)
            if self._throttle.blocked(address):
                return _json(
                    connection,
                    http.HTTPStatus.TOO_MANY_REQUESTS,
                    frames.error(codes.RATE_LIMITED, "too many failed keys; try again later"),
                )
            self._throttle.record_failure(address)
            if path != WS_PATH:
                return _json(
                    connection,
                    http.HTTPStatus.UNAUTHORIZED,
                    frames.error(codes.AUTHENTICATION_FAILED, _AUTH_MESSAGE),
                )
            return None  # the handshake goes on; _handle answers the seed's error frame
        if path == "/status":
            return _json(connection, http.HTTPStatus.OK, self._status())
        if path == "/metrics":
            response = connection.respond(
                http.HTTPStatus.OK, generate_latest(self.context.metrics.registry).decode()
            )
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response
        return None  # go on with the WebSocket handshake

    def _status(self) -> dict[str, object]:
        config = self._config
        actors: dict[str, list[dict[str, object]]] = {"tool": [], "chat": []}
        for status in self.registry.snapshot():
            beat = status.heartbeat
            actors[beat.kind].append(
                {
                    "actor_id": beat.actor_id,
                    "ready": beat.ready,
                    "running": beat.running,
                    "draining": beat.draining,
                    "alive": self.registry.is_alive(beat.actor_id),
                }
            )
        return {
            "status": "running",
            "healthy": self.healthy(),
            "edge_id": self.edge_id,
            "connections": self.capacity(),
            "deploy_models": config.models.deploy,
            "concurrent_model_call": config.models.concurrent_model_call,
            "models": {
                "chat": config.chat.model if config.models.chat else None,
                "tool": config.tool.model if config.models.tool else None,
            },
            "bus": {"connected": self.nc.is_connected},
            "actors": actors,
            "turns": dict(self.stats.outcomes),
        }

    # --- WebSocket ------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        conn_id = f"c{next(self._conn_ids)}-{uuid.uuid4().hex[:6]}"
        log = logging.LoggerAdapter(self._log, {"conn_id": conn_id})
        encode = self.context.encoder.encode
        request = ws.request
        assert request is not None and self._slots is not None
        if not is_authorized(request.path, request.headers, self._config.edge.api_key):
            log.info("rejected: authentication failed")  # counted in _process_request
            await ws.send(encode(frames.error(codes.AUTHENTICATION_FAILED, _AUTH_MESSAGE)))
            await ws.close(1008, "authentication failed")
            return
        slot = None if self._shutting_down else self._slots.acquire()
        if slot is None:
            capacity = self.capacity()
            if self._shutting_down:  # as full as it will get: say so, as the seed does
                capacity = {**capacity, "available": 0, "at_capacity": True}
            log.info("rejected: at capacity (%d/%d)", capacity["active"], capacity["max"])
            await ws.send(
                encode(
                    frames.error(
                        codes.SERVER_AT_CAPACITY,
                        f"Server is at capacity. Active connections: {capacity['active']}/"
                        f"{capacity['max']}. Please try again later.",
                        capacity=capacity,
                    )
                )
            )
            await ws.close(1013, "server at capacity")
            return
        connection = ClientConnection(self.context, ws, log)
        self.connections.add(connection)
        log.info("connected from %s (%d here)", _peer(ws), len(self.connections))
        try:
            await connection.serve()
        except* Exception as group:
            log.error("connection failed", exc_info=group)
            await ws.close(1011, "internal error")
        finally:
            self.connections.discard(connection)
            slot.release()
            log.info("disconnected (%d here)", len(self.connections))

    # --- bus ------------------------------------------------------------------

    async def _session_store(self, nc: NatsClient) -> SessionStore:
        edge = self._config.edge
        local = MemorySessionStore(ttl_s=edge.session_ttl_s, max_sessions=edge.max_sessions)
        js = nc.jetstream(timeout=2.0)
        try:
            try:
                kv = await js.key_value(SESSIONS_BUCKET)
            except BucketNotFoundError:
                kv = await js.create_key_value(
                    bucket=SESSIONS_BUCKET,
                    history=1,
                    ttl=edge.session_ttl_s,
                    replicas=edge.session_replicas,
                    description="yap-bus session settings",
                )
        except Exception as exc:  # no JetStream: sessions stay per edge
            self._log.warning("JetStream unavailable (%r): session settings stay in this edge", exc)
            return local
        return KvSessionStore(kv, local, self._log, max_value_bytes=nc.max_payload)

    async def _publish_stats(self) -> None:
        stats = self.stats
        subject = subjects.edge_stats(self.edge_id)
        while True:
            report = EdgeStats(
                edge_id=self.edge_id,
                interval_s=STATS_INTERVAL_S,
                connections=len(self.connections),
                max_connections=self._config.max_connections,
                running_turns=sum(1 for c in self.connections if c.turn_running),
                turns=dict(stats.outcomes),
                ttft_p50_ms=_percentile_ms(stats.recent_ttft, 50),
                ttft_p95_ms=_percentile_ms(stats.recent_ttft, 95),
                toolcall_p50_ms=_percentile_ms(stats.recent_toolcall, 50),
            )
            try:
                await self.nc.publish(subject, self._codec.encode(report))
            except Exception as exc:  # stats are best effort
                self._log.debug("stats not sent: %r", exc)
            await asyncio.sleep(STATS_INTERVAL_S)

    async def _watch_turns(self) -> None:
        """One ticker for every running turn's deadlines and actors, not one per turn."""
        while True:
            await asyncio.sleep(TICK_S)
            await self._check_turns(time.monotonic())

    async def _check_turns(self, now: float) -> None:
        # A function of its own so that no loop variable keeps a closed connection
        # alive while the ticker sleeps.
        for connection in list(self.connections):
            if connection.turn_running:
                await connection.check(now, self.registry.is_alive)

    async def _on_bus_lost(self) -> None:
        """Turns in flight cannot finish without the bus: end them now, not at a timeout."""
        for connection in list(self.connections):
            await connection.bus_lost()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            heartbeat = self._codec.decode_heartbeat(msg.data)
        except BusDecodeError as exc:
            self._log.warning("dropped malformed heartbeat: %s", exc)
            return
        restarted = self.registry.observe(heartbeat)
        self.context.legs.heard(heartbeat)
        if restarted:
            # The actor restarted: the legs its old instance accepted are gone now,
            # not when its silence would have been noticed.
            self._log.warning(
                "actor %s restarted (instance %s)", heartbeat.actor_id, heartbeat.instance
            )
            for connection in list(self.connections):
                await connection.actor_restarted(heartbeat.actor_id, heartbeat.instance)


_AUTH_MESSAGE = (
    "Authentication required. Provide valid API key via 'api_key' query parameter, "
    "'X-API-Key' header or 'Authorization: Bearer'."
)


def _json(connection: ServerConnection, status: http.HTTPStatus, body: object) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


def _percentile_ms(samples: Collection[float], q: float) -> float:
    """0 when there is nothing yet: a fresh edge reports no latency, not an error."""
    return round(percentile(samples, q) * 1000, 2) if samples else 0.0


def _peer_host(ws: ServerConnection) -> str:
    address = ws.remote_address
    return str(address[0]) if address else "?"


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
