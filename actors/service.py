"""The part every actor shares: bus subscriptions, the turn table, heartbeats, drain.

``ActorService`` is an async context manager around one engine and one worker (the
kind-specific prompt and output logic). Each handler is an error boundary: a bad
payload or a failed turn becomes an error event and serving goes on; only a dead
engine stops the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors.emitter import TurnEmitter
from actors.engines.base import Engine, EngineDeadError, EngineRequestError
from actors.metrics import ActorMetrics
from bus import codes, subjects
from bus.codec import BusDecodeError, Codec
from bus.connect import connect
from bus.events import (
    Accepted,
    ActorKind,
    Cancel,
    ChatStart,
    Heartbeat,
    Rejected,
    ToolStart,
    Warm,
    Warmed,
    request_id,
)
from configs.schema import ActorConfig, BusConfig

__all__ = ["ActorService", "Spawn", "Worker"]

_TOMBSTONES = 4096  # cancels remembered for turns whose start has not arrived yet


Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class Worker(Protocol):
    """The kind-specific half of an actor."""

    kind: ActorKind

    async def open(self, spawn: Spawn | None = None) -> None:
        """Get ready to serve, once the engine has started (build prompt encoders).

        ``spawn`` runs a coroutine as a background task of the service (warm requests
        of the worker's own): cancelled when the service stops.
        """
        ...

    async def close(self) -> None:
        """Release what ``open`` built; called before the engine closes."""
        ...

    def pending(self) -> int:
        """Requests of the worker's own (warms) spawned but not yet in the engine."""
        ...

    async def run_turn(self, event: ToolStart | ChatStart, emit: TurnEmitter) -> None:
        """Generate and publish the leg's events, ending with ``emit.done``.

        On ``CancelledError`` it aborts its engine request and re-raises; the service
        publishes the cancelled ``Done``.
        """
        ...

    async def warm(self, event: Warm) -> Warmed: ...


class ActorService:
    def __init__(
        self,
        *,
        config: ActorConfig,
        actor_id: str,
        engine: Engine,
        worker: Worker,
        bus: BusConfig,
        codec: Codec,
        log: logging.Logger,
        instance: str | None = None,
    ) -> None:
        self.actor_id = actor_id
        # This process start of the actor id; edges that see a new one in a
        # heartbeat know the legs the old one accepted are gone.
        self.instance = instance or uuid.uuid4().hex[:12]
        self.kind = worker.kind
        self.engine = engine
        self._config = config
        self._worker = worker
        self._bus = bus
        self._nc = NatsClient()  # replaced by a connected one on entry
        self._codec = codec
        self._log = logging.LoggerAdapter(log, {"actor_id": actor_id})
        self._turns: dict[str, asyncio.Task[None]] = {}
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._start_subs: list[Subscription] = []
        self._subs: list[Subscription] = []
        self._group = asyncio.TaskGroup()
        self._background: set[asyncio.Task[None]] = set()  # heartbeats and warms
        self._ready = False
        self._draining = False
        self.fatal = asyncio.Event()  # set when the engine is dead
        self.metrics = ActorMetrics(self.kind, lambda: len(self._turns), engine.running)

    @property
    def running(self) -> int:
        return len(self._turns)

    async def __aenter__(self) -> ActorService:
        self._nc = await connect(
            self._bus,
            name=f"yap-{self.actor_id}",
            log=self._log.logger,
            on_disconnect=self.bus_lost,
            on_reconnect=self.bus_back,
        )
        await self._group.__aenter__()
        self._spawn(self._heartbeat_loop())
        loaded = time.monotonic()
        await self.engine.start()
        await self._worker.open(self._spawn)
        kind = self.kind
        start_subject = subjects.all_tool_starts() if kind == "tool" else subjects.all_chat_starts()
        queue = subjects.QUEUE_TOOL if kind == "tool" else subjects.QUEUE_CHAT
        self._start_subs.append(
            await self._nc.subscribe(start_subject, queue=queue, cb=self._on_start)
        )
        if kind == "chat":
            self._start_subs.append(
                await self._nc.subscribe(subjects.all_chat_warms(), queue=queue, cb=self._on_warm)
            )
            # Addressed to this actor alone: sessions whose prefixes it has cached.
            self._start_subs.append(
                await self._nc.subscribe(
                    subjects.all_chat_starts_at(self.actor_id), cb=self._on_start
                )
            )
            self._start_subs.append(
                await self._nc.subscribe(
                    subjects.all_chat_warms_at(self.actor_id), cb=self._on_warm
                )
            )
        self._subs.append(await self._nc.subscribe(subjects.all_cancels(), cb=self._on_cancel))
        await self._nc.flush()
        self._ready = True
        await self._publish_heartbeat()
        self._log.info(
            "%s actor ready: model %s loaded in %.1f s",
            kind,
            self.engine.model_id,
            time.monotonic() - loaded,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.drain()
        for task in list(self._background):
            task.cancel()
        await self._group.__aexit__(None, None, None)
        try:
            await self._nc.drain()
        except Exception as exc_:
            self._log.warning("bus drain failed: %r", exc_)
        await self._worker.close()
        await self.engine.close()
        self._log.info("%s actor stopped", self.kind)

    async def drain(self) -> None:
        """Stop taking turns, let running ones finish for a bounded time, cancel the rest."""
        if self._draining:
            return
        self._draining = True
        for sub in self._start_subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                self._log.debug("unsubscribe failed: %r", exc)
        await self._publish_heartbeat()
        pending = list(self._turns.values())
        if pending:
            self._log.info(
                "draining %d turn(s) for up to %.0f s", len(pending), self._config.drain_timeout_s
            )
            _, still = await asyncio.wait(pending, timeout=self._config.drain_timeout_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=2.0)

    async def bus_lost(self) -> None:
        """No one can hear this actor's turns now: abort them rather than generate on."""
        if self._turns:
            self._log.warning("bus lost: cancelling %d running turn(s)", len(self._turns))
        for task in list(self._turns.values()):
            task.cancel()

    async def bus_back(self) -> None:
        """Announce ourselves at once so edges see us alive again."""
        await self._publish_heartbeat()

    # --- handlers -------------------------------------------------------------

    async def _on_start(self, msg: Msg) -> None:
        received = time.monotonic()
        try:
            event = self._codec.decode_inbound(msg.data)
        except BusDecodeError as exc:
            self._log.warning("dropped malformed start on %s: %s", msg.subject, exc)
            self.metrics.bus_drops.inc()
            await self._reply(msg, Rejected("", "", self.actor_id, codes.BAD_REQUEST, str(exc)))
            return
        if not isinstance(event, ToolStart | ChatStart) or (
            isinstance(event, ToolStart) != (self.kind == "tool")
        ):
            self._log.warning("dropped %s on %s", type(event).__name__, msg.subject)
            return
        if not event.edge_id:
            await self._reply(
                msg,
                Rejected(
                    event.session_id,
                    event.turn_id,
                    self.actor_id,
                    codes.BAD_REQUEST,
                    "the start names no edge to send the turn's events to",
                ),
            )
            return
        if self._draining:
            await self._reply(
                msg,
                Rejected(
                    event.session_id,
                    event.turn_id,
                    self.actor_id,
                    codes.ACTOR_DRAINING,
                    "actor is shutting down; retry",
                ),
            )
            return
        if len(self._turns) >= self._config.max_running or event.turn_id in self._turns:
            await self._reply(
                msg,
                Rejected(
                    event.session_id,
                    event.turn_id,
                    self.actor_id,
                    codes.ACTOR_BUSY,
                    "actor is at capacity; retry",
                ),
            )
            return
        await self._reply(
            msg,
            Accepted(event.session_id, event.turn_id, self.actor_id, self.kind, self.instance),
        )
        emit = TurnEmitter(
            self._nc,
            self._codec,
            self.kind,
            event.session_id,
            event.turn_id,
            edge_id=event.edge_id,
            actor_id=self.actor_id,
            spawn=self._spawn,
            received=received,
        )
        if event.turn_id in self._tombstones:
            # Its cancel overtook it on the bus: end it without touching the engine.
            del self._tombstones[event.turn_id]
            await emit.done("cancelled")
            return
        task = self._group.create_task(self._run_turn(event, emit))
        self._turns[event.turn_id] = task
        task.add_done_callback(lambda _, turn_id=event.turn_id: self._turn_ended(turn_id, emit))

    def _turn_ended(self, turn_id: str, emit: TurnEmitter) -> None:
        """Whatever became of the task, forget the turn and make sure it ended in a Done.

        A task cancelled before its first step never runs its body (not even its
        ``finally``), which happens when a cancel lands right behind its start.
        """
        self._turns.pop(turn_id, None)
        if not emit.finished:
            try:
                self._spawn(emit.done("cancelled"))
            except RuntimeError:  # the service is shutting down; edges time the turn out
                self._log.debug("could not publish done for %s", turn_id)

    async def _run_turn(self, event: ToolStart | ChatStart, emit: TurnEmitter) -> None:
        log = logging.LoggerAdapter(
            self._log.logger,
            {"actor_id": self.actor_id, "session_id": event.session_id, "turn_id": event.turn_id},
        )
        started = time.monotonic()
        log.info("%s turn start", self.kind)
        outcome = "completed"
        try:
            await self._worker.run_turn(event, emit)
        except asyncio.CancelledError:
            outcome = "cancelled"
            log.info(
                "%s turn cancelled after %.0f ms", self.kind, (time.monotonic() - started) * 1000
            )
            await emit.done("cancelled")
            raise
        except EngineDeadError as exc:
            outcome = "engine_dead"
            log.error("engine dead: %s", exc)
            await emit.error(codes.ENGINE_DEAD, "the model engine stopped; retry shortly")
            await emit.done("error")
            self.fatal.set()
        except EngineRequestError as exc:
            outcome = "failed"
            log.warning("%s turn failed: %s", self.kind, exc)
            await emit.error(codes.ACTOR_ERROR, f"generation failed: {exc}")
            await emit.done("error")
        except Exception:
            outcome = "crashed"
            log.exception("%s turn crashed", self.kind)
            await emit.error(codes.INTERNAL_ERROR, "the actor failed on this turn")
            await emit.done("error")
        else:
            first = emit.first_event_at
            # The first event (toolcall or token) is what the client waits for; the
            # rest of the turn is streaming, or an early stop being drained.
            log.info(
                "%s turn done in %.0f ms (first %s at %s ms)",
                self.kind,
                (time.monotonic() - started) * 1000,
                "toolcall" if self.kind == "tool" else "token",
                f"{(first - started) * 1000:.1f}" if first is not None else "-",
            )
        finally:
            self.metrics.turns.labels(self.kind, outcome).inc()
            self.metrics.tokens.inc(emit.token_events)
            self.metrics.deltas.inc(emit.tokens_sent)
            if emit.first_event_at is not None:
                self.metrics.first_output.observe(emit.first_event_at - started)
                self.metrics.observe_stages(emit.clock.timing(emit.first_event_at))
            self._turns.pop(event.turn_id, None)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            event = self._codec.decode_inbound(msg.data)
        except BusDecodeError as exc:
            self._log.warning("dropped malformed cancel on %s: %s", msg.subject, exc)
            self.metrics.bus_drops.inc()
            return
        if not isinstance(event, Cancel):
            return
        task = self._turns.get(event.turn_id)
        if task is not None:
            # Cancel first: the engine stops now, not when the turn's task next gets
            # the loop (behind every token step that is ready to run). The worker
            # aborts again on CancelledError; abort is idempotent.
            task.cancel()
            await self.engine.abort(request_id(self.kind, event.session_id, event.turn_id))
            return
        # Unknown turn: another actor's, already finished, or not started yet.
        self._tombstones[event.turn_id] = None
        while len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)

    async def _on_warm(self, msg: Msg) -> None:
        try:
            event = self._codec.decode_inbound(msg.data)
        except BusDecodeError as exc:
            self._log.warning("dropped malformed warm on %s: %s", msg.subject, exc)
            self.metrics.bus_drops.inc()
            return
        if not isinstance(event, Warm):
            return
        self._spawn(self._warm(msg, event))

    async def _warm(self, msg: Msg, event: Warm) -> None:
        try:
            reply: Warmed | Rejected = await self._worker.warm(event)
        except EngineDeadError as exc:
            self._log.error("engine dead: %s", exc)
            reply = Rejected(
                event.session_id,
                event.turn_id,
                self.actor_id,
                codes.ENGINE_DEAD,
                "the model engine stopped",
            )
            self.fatal.set()
        except Exception as exc:
            self._log.warning("warm failed: %r", exc)
            reply = Rejected(
                event.session_id, event.turn_id, self.actor_id, codes.ACTOR_ERROR, "warming failed"
            )
        await self._reply(msg, reply)

    # --- heartbeats -----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self._config.heartbeat_interval_s
        while True:
            await self._publish_heartbeat()
            await asyncio.sleep(interval)

    async def _publish_heartbeat(self) -> None:
        beat = Heartbeat(
            actor_id=self.actor_id,
            kind=self.kind,
            interval_s=self._config.heartbeat_interval_s,
            # What the engine runs, and the worker's warms about to reach it: idle
            # means nothing is about to start either.
            running=self.engine.running() + self._worker.pending(),
            ready=self._ready,
            draining=self._draining,
            instance=self.instance,
            limit=self._config.max_running,
            turns=len(self._turns),
        )
        try:
            await self._nc.publish(
                subjects.heartbeat(self.kind, self.actor_id), self._codec.encode(beat)
            )
        except Exception as exc:
            self._log.debug("heartbeat not sent: %r", exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._group.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _reply(self, msg: Msg, reply: Accepted | Rejected | Warmed) -> None:
        if msg.reply:
            await self._nc.publish(msg.reply, self._codec.encode(reply))
