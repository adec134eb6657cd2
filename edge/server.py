"""The edge's I/O shell: HTTP routes, the WebSocket handshake gate, shutdown.

``EdgeServer`` is an async context manager: entering connects to the bus, follows
actor heartbeats and starts listening; leaving stops accepting, lets running turns
finish for a bounded time, closes clients with 1001 and drains the bus connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import logging
import uuid
from collections.abc import Collection
from types import TracebackType

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from bus import subjects
from bus.codec import BusDecodeError, Codec
from bus.connect import connect
from bus.events import EdgeStats
from bus.stats import percentile
from configs.schema import Config
from edge import errors, frames
from edge.auth import AuthThrottle, is_authorized
from edge.connection import ClientConnection
from edge.frames import FrameEncoder
from edge.metrics import EdgeMetrics
from edge.protocol import ClientProtocol, ProtocolLimits
from edge.recorder import Recorder
from edge.registry import ActorRegistry
from edge.sessions import KvSessionStore, MemorySessionStore, SessionStore
from edge.state import EdgeState

__all__ = ["WS_PATH", "EdgeServer"]

WS_PATH = "/ws"
STATS_INTERVAL_S = 1.0
SESSIONS_BUCKET = "yap_sessions"


class EdgeServer:
    def __init__(self, config: Config, log: logging.Logger) -> None:
        self._config = config
        self._log = log
        self._state: EdgeState | None = None
        self._server: Server | None = None
        self._conn_ids = itertools.count(1)
        self.edge_id = f"edge-{uuid.uuid4().hex[:10]}"
        self._stats_task: asyncio.Task[None] | None = None
        self._recorder: Recorder | None = None
        self._throttle = AuthThrottle(
            max_failures=config.edge.auth_max_failures,
            window_s=config.edge.auth_failure_window_s,
        )

    @property
    def state(self) -> EdgeState:
        assert self._state is not None, "EdgeServer is not running"
        return self._state

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> EdgeServer:
        config = self._config
        edge = config.edge
        registry = ActorRegistry(lost_after_s=edge.actor_lost_after_s)
        nc = await connect(
            config.bus, name="yap-edge", log=self._log, on_disconnect=self._on_bus_lost
        )
        self._state = EdgeState(
            config=config,
            nc=nc,
            codec=Codec(),
            encoder=FrameEncoder(),
            protocol=ClientProtocol(
                ProtocolLimits(
                    max_utterance_chars=edge.max_utterance_chars,
                    max_history_chars=edge.max_history_chars,
                    max_persona_chars=edge.max_persona_chars,
                )
            ),
            sessions=await self._session_store(nc),
            recorder=await self._start_recorder(nc),
            registry=registry,
            metrics=EdgeMetrics(
                connections=lambda: len(self.state.connections),
                actors_alive=lambda kind: len(registry.live(kind)),  # type: ignore[arg-type]
            ),
        )
        await nc.subscribe(subjects.ALL_HEARTBEATS, cb=self._on_heartbeat)
        # Owned: cancelled and awaited in __aexit__.
        self._stats_task = asyncio.create_task(self._publish_stats())
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
        )
        self._log.info(
            "edge ready on ws://%s:%d%s (deploy=%s, max connections %d)",
            edge.host,
            self.port,
            WS_PATH,
            config.models.deploy,
            config.max_connections,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state, server = self._state, self._server
        if state is None or server is None:
            return
        state.shutting_down = True
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        timeout_s = self._config.edge.shutdown_timeout_s
        self._log.info(
            "edge stopping: %d connection(s), waiting up to %.0f s for turns",
            len(state.connections),
            timeout_s,
        )
        server.close(close_connections=False)
        async with asyncio.TaskGroup() as group:
            for connection in list(state.connections):
                group.create_task(connection.shutdown(timeout_s))
        try:
            async with asyncio.timeout(timeout_s):
                await server.wait_closed()
        except TimeoutError:
            self._log.warning("connections still open after %.0f s; dropping them", timeout_s)
        if self._recorder is not None:
            await self._recorder.close()
        try:
            await state.nc.drain()
        except Exception as exc:
            self._log.warning("bus drain failed: %r", exc)
        self._log.info("edge stopped")

    # --- HTTP -----------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        state = self.state
        if path == "/healthz":
            healthy = state.healthy()
            return _json(
                connection,
                http.HTTPStatus.OK if healthy else http.HTTPStatus.SERVICE_UNAVAILABLE,
                {"status": "ok" if healthy else "unavailable"},
            )
        address = _peer_host(connection)
        if path in ("/status", "/metrics", WS_PATH) and self._throttle.blocked(address):
            return _json(
                connection,
                http.HTTPStatus.TOO_MANY_REQUESTS,
                frames.error(errors.RATE_LIMITED, "too many failed keys; try again later"),
            )
        if path == "/status":
            if not is_authorized(request.path, request.headers, self._config.edge.api_key):
                self._throttle.record_failure(address)
                return _json(
                    connection,
                    http.HTTPStatus.UNAUTHORIZED,
                    frames.error(errors.AUTHENTICATION_FAILED, _AUTH_MESSAGE),
                )
            return _json(connection, http.HTTPStatus.OK, self._status())
        if path == "/metrics":
            if not is_authorized(request.path, request.headers, self._config.edge.api_key):
                self._throttle.record_failure(address)
                return _json(
                    connection,
                    http.HTTPStatus.UNAUTHORIZED,
                    frames.error(errors.AUTHENTICATION_FAILED, _AUTH_MESSAGE),
                )
            response = connection.respond(
                http.HTTPStatus.OK, generate_latest(state.metrics.registry).decode()
            )
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response
        if path != WS_PATH:
            return _json(connection, http.HTTPStatus.NOT_FOUND, {"error": "not found"})
        return None  # go on with the WebSocket handshake

    def _status(self) -> dict[str, object]:
        state = self.state
        config = self._config
        actors: dict[str, list[dict[str, object]]] = {"tool": [], "chat": []}
        for status in state.registry.snapshot():
            beat = status.heartbeat
            actors[beat.kind].append(
                {
                    "actor_id": beat.actor_id,
                    "ready": beat.ready,
                    "running": beat.running,
                    "draining": beat.draining,
                    "alive": state.registry.is_alive(beat.actor_id),
                }
            )
        return {
            "status": "running",
            "healthy": state.healthy(),
            "connections": state.capacity(),
            "deploy_models": config.models.deploy,
            "concurrent_model_call": config.models.concurrent_model_call,
            "models": {
                "chat": config.chat.model if config.models.chat else None,
                "tool": config.tool.model if config.models.tool else None,
            },
            "bus": {"connected": state.nc.is_connected},
            "actors": actors,
            "turns": dict(state.outcomes),
        }

    # --- WebSocket ------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        state = self.state
        conn_id = f"c{next(self._conn_ids)}-{uuid.uuid4().hex[:6]}"
        log = logging.LoggerAdapter(self._log, {"conn_id": conn_id})
        encode = state.encoder.encode
        request = ws.request
        assert request is not None
        if not is_authorized(request.path, request.headers, self._config.edge.api_key):
            self._throttle.record_failure(_peer_host(ws))
            log.info("rejected: authentication failed")
            await ws.send(encode(frames.error(errors.AUTHENTICATION_FAILED, _AUTH_MESSAGE)))
            await ws.close(1008, "authentication failed")
            return
        if state.at_capacity or state.shutting_down:
            capacity = state.capacity()
            log.info("rejected: at capacity (%d/%d)", capacity["active"], capacity["max"])
            await ws.send(
                encode(
                    frames.error(
                        errors.SERVER_AT_CAPACITY,
                        f"Server is at capacity. Active connections: {capacity['active']}/"
                        f"{capacity['max']}. Please try again later.",
                        capacity=capacity,
                    )
                )
            )
            await ws.close(1013, "server at capacity")
            return
        connection = ClientConnection(state, ws, log)
        state.connections.add(connection)
        log.info("connected from %s (%d active)", _peer(ws), len(state.connections))
        try:
            await connection.serve()
        except* Exception as group:
            log.error("connection failed", exc_info=group)
            await ws.close(1011, "internal error")
        finally:
            state.connections.discard(connection)
            log.info("disconnected (%d active)", len(state.connections))

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
                    description="yap-bus session settings",
                )
        except Exception as exc:  # no JetStream: sessions stay per edge
            self._log.warning("JetStream unavailable (%r): session settings stay in this edge", exc)
            return local
        return KvSessionStore(kv, local, self._log)

    async def _start_recorder(self, nc: NatsClient) -> Recorder:
        recorder = self._recorder = Recorder(self._config, nc, self.edge_id, self._log)
        await recorder.start()
        return recorder

    async def _publish_stats(self) -> None:
        state = self.state
        subject = subjects.edge_stats(self.edge_id)
        while True:
            stats = EdgeStats(
                edge_id=self.edge_id,
                interval_s=STATS_INTERVAL_S,
                connections=len(state.connections),
                max_connections=self._config.max_connections,
                running_turns=sum(1 for c in state.connections if c.turn_running),
                turns=dict(state.outcomes),
                ttft_p50_ms=_percentile_ms(state.recent_ttft, 50),
                ttft_p95_ms=_percentile_ms(state.recent_ttft, 95),
                toolcall_p50_ms=_percentile_ms(state.recent_toolcall, 50),
            )
            try:
                await state.nc.publish(subject, state.codec.encode(stats))
            except Exception as exc:  # stats are best effort
                self._log.debug("stats not sent: %r", exc)
            await asyncio.sleep(STATS_INTERVAL_S)

    async def _on_bus_lost(self) -> None:
        """Turns in flight cannot finish without the bus: end them now, not at a timeout."""
        if self._state is None:
            return
        for connection in list(self._state.connections):
            await connection.bus_lost()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            heartbeat = self.state.codec.decode_heartbeat(msg.data)
        except BusDecodeError as exc:
            self._log.warning("dropped malformed heartbeat: %s", exc)
            return
        self.state.registry.observe(heartbeat)


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
