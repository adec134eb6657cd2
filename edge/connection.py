"""One client connection: reads messages, runs turns, writes frames.

The decisions live elsewhere, without I/O: what a message is (``edge.protocol``),
what it does to the session (``edge.session``), what a bus event does to a turn
(``edge.turn``); requests to the actors go through ``edge.legs``. This class
carries out what they decide.

Each connection owns one TaskGroup (the frame writer, turn tasks, warm requests);
each turn owns another (its leg start requests). When the connection's group
exits, its turns are gone, and their engine requests have been cancelled on the bus.

Frames are written by an ``edge.writer.FrameWriter``, all that is pending at once,
when a burst of work for the connection is over.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from bus import codes
from bus.events import ActorKind, OutboundEvent
from edge import frames, session
from edge.context import EdgeContext
from edge.errors import ProtocolError
from edge.legs import LegRefused
from edge.messages import (
    CancelMessage,
    ClientMessage,
    EndMessage,
    PingMessage,
    SetPersonaMessage,
    StartMessage,
    WarmHistoryMessage,
    WarmPersonaMessage,
)
from edge.ratelimit import RateLimiter
from edge.sessions import SessionSettings, new_session
from edge.turn import Action, CancelLegs, SendFrame, SendToken, StartLeg, Turn, TurnPlan
from edge.writer import FrameWriter

__all__ = ["IDLE_CLOSE_CODE", "ClientConnection"]

IDLE_CLOSE_CODE = 4000


@dataclass(eq=False)
class _RunningTurn:
    turn: Turn
    message: StartMessage
    settings: SessionSettings
    log: logging.LoggerAdapter[logging.Logger]
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    group: asyncio.TaskGroup | None = None
    task: asyncio.Task[None] | None = None
    legs: set[asyncio.Task[None]] = field(default_factory=set)
    first_token_at: float | None = None
    sent: list[str] = field(default_factory=list)  # the reply text pushed to the client


class ClientConnection:
    def __init__(
        self, context: EdgeContext, ws: ServerConnection, log: logging.LoggerAdapter[logging.Logger]
    ) -> None:
        self._ctx = context
        self._ws = ws
        self._log = log
        edge = context.config.edge
        self._session = session.SessionView()
        self._running: _RunningTurn | None = None
        self._messages = RateLimiter(edge.messages_per_minute)
        self._cancels = RateLimiter(edge.cancels_per_minute)
        self._closing = False  # the server is shutting down: no new turns
        self._close_code: tuple[int, str] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._out = FrameWriter(
            ws,
            context.encoder,
            flush_s=edge.stream_flush_ms / 1000.0,
            token_frames=context.metrics.tokens,
            log=log,
        )
        self._writer: asyncio.Task[None] | None = None
        self._recorder = context.recorder.connection()

    @property
    def turn_running(self) -> bool:
        return self._running is not None and not self._running.turn.finished

    # --- lifecycle ------------------------------------------------------------

    async def serve(self) -> None:
        """Run until the client goes away, then cancel whatever it left running."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                writer = self._writer = group.create_task(self._out.run())
                try:
                    await self._read_loop()
                finally:
                    await self._end_turn(reason="disconnect")
                    for task in list(self._tasks):
                        task.cancel()
                    self._out.stop()
                await writer
        finally:
            if self._session.session_id is not None:
                self._ctx.dispatcher.detach(self._session.session_id, self)
        if self._close_code is not None:
            await self._ws.close(*self._close_code)

    async def shutdown(self, timeout_s: float) -> None:
        """Let the running turn finish within ``timeout_s``, then end it and close 1001."""
        self._closing = True
        running = self._running
        if running is not None and not running.turn.finished:
            try:
                async with asyncio.timeout(timeout_s):
                    await running.ended.wait()
            except TimeoutError:
                await self._fail(
                    running,
                    codes.SERVER_SHUTTING_DOWN,
                    "the server is restarting; please reconnect",
                )
        self._close_code = (1001, "server shutting down")
        self._out.stop()
        if self._writer is not None:
            # The last frames (the turn's error and done) go out before the close.
            await asyncio.wait({self._writer}, timeout=1.0)
        await self._ws.close(1001, "server shutting down")

    async def bus_lost(self) -> None:
        """The bus went away: the running turn cannot finish, so end it with an error."""
        if (running := self._running) is not None:
            await self._fail(
                running, codes.BUS_UNAVAILABLE, "the message bus went away; please retry"
            )

    async def check(self, now: float, is_alive: Callable[[str], bool]) -> None:
        """The running turn's deadlines and actors (the server calls this every tick)."""
        if (running := self._running) is not None and (
            actions := running.turn.expire(now, is_alive)
        ):
            await self._perform(running, actions)
            self.flush()

    async def actor_restarted(self, actor_id: str, instance: str) -> None:
        if (running := self._running) is not None and (
            actions := running.turn.restarted(actor_id, instance)
        ):
            await self._perform(running, actions)
            self.flush()

    # --- reading --------------------------------------------------------------

    async def _read_loop(self) -> None:
        idle_s = self._ctx.config.edge.idle_timeout_s
        protocol = self._ctx.protocol
        while True:
            try:
                async with asyncio.timeout(idle_s if idle_s > 0 else None):
                    data = await self._ws.recv()
            except TimeoutError:
                if self.turn_running:
                    continue  # waiting on a reply is not idleness
                self._log.info("closing idle connection after %.0f s", idle_s)
                self._close_code = (IDLE_CLOSE_CODE, "idle timeout")
                return
            except ConnectionClosed:
                return
            self._recorder.frame(data)
            if not self._messages.allow():
                self._error(codes.RATE_LIMITED, "too many messages; slow down")
            else:
                try:
                    message = protocol.parse(data)
                except ProtocolError as exc:
                    self._log.info("bad message: %s", exc.code)
                    self._error(exc.code, exc.message)
                else:
                    if await self._handle(message):
                        return
            self.flush()

    async def _handle(self, message: ClientMessage) -> bool:
        """Act on one message; True when the connection should close."""
        match message:
            case StartMessage():
                await self._start_turn(message)
            case CancelMessage():
                if not self._cancels.allow():
                    self._error(codes.RATE_LIMITED, "too many cancels; slow down")
                    return False
                await self._end_turn(reason="cancel")
                self._out.push(frames.done(cancelled=True))
            case WarmPersonaMessage() | WarmHistoryMessage():
                self._spawn(self._warm(message))
            case SetPersonaMessage():
                await self._set_persona(message)
            case PingMessage():
                self._out.push(frames.pong())
            case EndMessage():
                was_running = await self._end_turn(reason="end")
                self._out.push(frames.done(cancelled=True) if was_running else frames.done())
                self._close_code = (1000, "end")
                return True
        return False

    # --- turns ----------------------------------------------------------------

    async def _start_turn(self, message: StartMessage) -> None:
        ctx = self._ctx
        if self._closing:
            self._error(codes.SERVER_SHUTTING_DOWN, "the server is restarting; please reconnect")
            return
        session_id = message.session_id
        known = self._session.cached(session_id)
        stored = known or await ctx.sessions.get(session_id)
        try:
            settings, changed = session.start_settings(
                stored or new_session(ctx.rng, datetime.now()), message
            )
        except ProtocolError as exc:
            self._error(exc.code, exc.message)
            return
        # Only a start that will run barges in: a rejected one leaves the turn alone.
        await self._end_turn(reason="barge_in")
        # The copy, after the turn just stopped (or ended) added to its history.
        settings, seeded = session.turn_settings(
            settings,
            message,
            self._session.cached(session_id),
            max_chars=ctx.config.server_history_chars,
        )
        if self._session.session_id not in (None, session_id):
            await self._save()  # what the session left behind is not lost with the copy
        store = known is None or changed or seeded
        if message.server_history:
            # Stored once, when the turn ends, with its exchange (SessionView.unsaved).
            self._join(session_id, settings, unsaved=store)
        else:
            if store:
                await ctx.sessions.put(session_id, settings)
            self._join(session_id, settings)

        config = ctx.config
        models = config.models
        turn_id = uuid.uuid4().hex
        plan = TurnPlan(
            session_id=session_id,
            turn_id=turn_id,
            tool=models.tool,
            chat=models.chat,
            concurrent=models.concurrent_model_call,
        )
        log = logging.LoggerAdapter(
            self._log.logger,
            {**(self._log.extra or {}), "session_id": session_id, "turn_id": turn_id},
        )
        turn = Turn(
            plan,
            now=time.monotonic(),
            event_timeout_s=config.edge.event_timeout_s,
            turn_timeout_s=config.edge.turn_timeout_s,
        )
        running = _RunningTurn(
            turn=turn, message=session.leg_message(message, settings), settings=settings, log=log
        )
        self._out.push(
            session.start_ack(
                settings,
                session_id=session_id,
                turn_id=turn_id,
                chat_model=config.chat.model if models.chat else None,
                tool_model=config.tool.model if models.tool else None,
                server_history=message.server_history,
            )
        )
        self._running = running
        self._recorder.turn_started(session_id, turn_id, settings)
        log.info(
            "turn start (%s%s)",
            models.deploy,
            ", concurrent" if models.concurrent_model_call else "",
        )
        assert self._group is not None
        running.task = self._group.create_task(self._run_turn(running))

    async def _run_turn(self, running: _RunningTurn) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                running.group = group
                await self._perform(running, running.turn.begin())
                await running.ended.wait()
                for task in list(running.legs):  # start requests still waiting on a reply
                    task.cancel()
        finally:
            running.ended.set()
            machine = running.turn.machine
            code, outcome = machine.error_code, machine.outcome
            self._recorder.turn_ended(machine.plan.session_id, running.turn.turn_id, outcome, code)
            self._ctx.stats.outcomes[code or outcome] += 1
            self._ctx.metrics.turns.labels(code or outcome).inc()
            running.log.info(
                "turn %s in %.0f ms%s",
                "done" if outcome == "completed" else outcome,
                (time.monotonic() - running.turn.started_at) * 1000,
                f" ({code})" if code else "",
            )
            if self._running is running:
                self._running = None
            await self._save()

    async def _end_turn(self, *, reason: str) -> bool:
        """Stop the running turn (cancel, barge-in, disconnect); True if one was running."""
        running = self._running
        if running is None:
            return False
        self._running = None
        was_running = not running.turn.finished
        if was_running:
            # Cancel first: the actors hear of it before anything else is done here.
            await self._perform(running, running.turn.machine.cancel(), reason=reason)
            running.log.info("turn cancelled (%s)", reason)
            self._ctx.metrics.cancels.labels(reason).inc()
        running.ended.set()
        if running.task is not None:
            running.task.cancel()
        return was_running

    async def _fail(self, running: _RunningTurn, code: str, message: str) -> None:
        await self._perform(running, running.turn.machine.fail(code, message))
        self.flush()

    async def _perform(
        self, running: _RunningTurn, actions: list[Action], reason: str = "cancel"
    ) -> None:
        for action in actions:
            match action:
                case SendToken(text=text):
                    if self._running is running:
                        if running.first_token_at is None:
                            self._first_token(running)
                        running.sent.append(text)
                        self._out.push_token(text)
                case SendFrame(frame=frame):
                    if self._running is running:
                        self._count(frame, running)
                        self._out.push(frame)
                case StartLeg(kind=kind):
                    if running.group is not None:
                        task = running.group.create_task(self._start_leg(running, kind))
                        running.legs.add(task)
                        task.add_done_callback(running.legs.discard)
                case CancelLegs():
                    plan = running.turn.machine.plan
                    await self._ctx.legs.cancel(plan.session_id, plan.turn_id, reason)
        if running.turn.finished and not running.ended.is_set():
            # Once, the moment the turn ends: a barge-in start reads the history next.
            self._session.end_turn(
                running.message,
                outcome=running.turn.machine.outcome,
                reason=reason,
                sent="".join(running.sent),
                max_chars=self._ctx.config.server_history_chars,
            )
            running.ended.set()

    async def _start_leg(self, running: _RunningTurn, kind: ActorKind) -> None:
        plan = running.turn.machine.plan
        result = await self._ctx.legs.start(
            kind,
            session_id=plan.session_id,
            turn_id=plan.turn_id,
            message=running.message,
            settings=running.settings,
        )
        if isinstance(result, LegRefused):
            await self._fail(running, result.code, result.message)
            return
        running.log.debug("%s leg accepted by %s", kind, result.actor_id)
        actions = running.turn.accepted(kind, result.actor_id, result.instance, time.monotonic())
        await self._perform(running, actions)
        self.flush()
        if kind == "chat":
            await self._remember_home(
                plan.session_id, result.actor_id, defer=running.message.server_history
            )

    async def on_bus_event(self, sender: str, event: OutboundEvent) -> None:
        """One of the session's events, from the dispatcher (``EventSink``)."""
        running = self._running
        if running is None or event.turn_id != running.turn.turn_id:
            return  # an event of a finished or cancelled turn: never reaches the client
        if actions := running.turn.on_event(sender, event, time.monotonic()):
            await self._perform(running, actions)

    # --- session, warm and persona --------------------------------------------

    def _join(self, session_id: str, settings: SessionSettings, *, unsaved: bool = False) -> None:
        """Put the connection on ``session_id``: its events are routed here from now."""
        view = self._session
        if view.session_id != session_id:
            dispatcher = self._ctx.dispatcher
            if view.session_id is not None:
                dispatcher.detach(view.session_id, self)
            dispatcher.attach(session_id, self)
        view.adopt(session_id, settings, unsaved=unsaved)

    async def _remember_home(self, session_id: str, actor_id: str, *, defer: bool = False) -> None:
        if (settings := self._session.with_home(session_id, actor_id, defer=defer)) is not None:
            await self._ctx.sessions.put(session_id, settings)

    async def _save(self) -> None:
        """Store the session's copy if the store lacks some of it (SessionView.unsaved)."""
        if (unsaved := self._session.take_unsaved()) is not None:
            await self._ctx.sessions.put(*unsaved)

    async def _warm(self, message: WarmPersonaMessage | WarmHistoryMessage) -> None:
        ctx = self._ctx
        if not ctx.config.models.chat:
            self._error(codes.NO_ACTOR_AVAILABLE, "no chat model is deployed to warm")
            self.flush()
            return
        view = self._session
        session_id = view.session_id or f"warm-{uuid.uuid4().hex}"
        settings = view.settings
        if settings is None and view.session_id is not None:
            settings = await ctx.sessions.get(session_id)
        event = session.warm_event(
            message,
            settings or SessionSettings(),
            session_id=session_id,
            warm_id=uuid.uuid4().hex,
            edge_id=ctx.legs.edge_id,
        )
        home = ctx.legs.home(view.settings) if view.session_id is not None else None
        reply = await ctx.legs.warm(event, home)
        if isinstance(reply, LegRefused):
            self._error(reply.code, reply.message)
        else:
            await self._remember_home(session_id, reply.actor_id)
            self._out.push(frames.warmed(reply.segment, reply.bytes))
        self.flush()

    async def _set_persona(self, message: SetPersonaMessage) -> None:
        ctx = self._ctx
        view = self._session
        session_id = message.session_id or view.session_id
        if session_id is None:
            self._error(codes.NO_SESSION, "send 'start' (or set_persona with a session_id) first")
            return
        settings = view.cached(session_id) or await ctx.sessions.get(session_id)
        settings, changed = session.apply_persona(
            settings or new_session(ctx.rng, datetime.now()), message
        )
        await ctx.sessions.put(session_id, settings)
        if view.session_id is None:
            self._join(session_id, settings)  # no turn can be running yet
        else:
            # Another session's settings are stored, but this connection stays on its
            # own session: switching would strand the running turn's events.
            view.update(session_id, settings)
            await self._save()  # if a turn ended meanwhile, its write went over these
        self._out.push(
            frames.ack_set_persona(
                session_id=session_id,
                changed=changed,
                assistant_gender=settings.assistant_gender,
                persona_style=settings.persona_style,
                persona_text_override=settings.persona_text is not None,
            )
        )

    # --- writing --------------------------------------------------------------

    def flush(self) -> None:
        """Write what the last burst of work produced (``EventSink``)."""
        self._out.flush()

    def _error(self, code: str, message: str) -> None:
        frame = frames.error(code, message)
        self._recorder.error(code)
        self._count(frame, None)
        self._out.push(frame)

    def _first_token(self, running: _RunningTurn) -> None:
        running.first_token_at = time.monotonic()
        ttft = running.first_token_at - running.turn.started_at
        self._ctx.stats.recent_ttft.append(ttft)
        self._ctx.metrics.ttft.observe(ttft)

    def _count(self, frame: frames.Frame, running: _RunningTurn | None) -> None:
        kind = frame["type"]
        if kind == "error":
            self._ctx.metrics.errors.labels(frame["error_code"]).inc()
        elif kind == "toolcall" and running is not None:
            elapsed = time.monotonic() - running.turn.started_at
            self._ctx.stats.recent_toolcall.append(elapsed)
            self._ctx.metrics.toolcall.observe(elapsed)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._group is not None
        task = self._group.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
