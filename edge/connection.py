"""One client connection: reads messages, runs turns, writes frames.

Each connection owns one TaskGroup (the frame writer, turn tasks, warm requests);
each turn owns another (its leg start requests). When the connection's group
exits, its turns are gone, and their engine requests have been cancelled on the bus.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from bus import subjects
from bus.codec import BusDecodeError
from bus.events import (
    Accepted,
    ActorKind,
    Cancel,
    ChatStart,
    Rejected,
    ToolStart,
    Warm,
    Warmed,
)
from bus.persona import normalize_gender
from edge import errors, frames
from edge.errors import ProtocolError
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
from edge.outbox import Outbox
from edge.ratelimit import RateLimiter
from edge.sessions import SessionSettings, new_session
from edge.state import EdgeState
from edge.turn import Action, CancelLegs, SendFrame, SendToken, StartLeg, TurnMachine, TurnPlan

__all__ = ["ClientConnection"]

_TICK_S = 0.1  # how often a running turn checks its deadlines and its actors
IDLE_CLOSE_CODE = 4000


@dataclass
class _Turn:
    machine: TurnMachine
    start: StartMessage
    settings: SessionSettings
    log: logging.LoggerAdapter[logging.Logger]
    started_at: float = field(default_factory=time.monotonic)
    last_event_at: float = field(default_factory=time.monotonic)
    actors: dict[ActorKind, str] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    group: asyncio.TaskGroup | None = None
    task: asyncio.Task[None] | None = None
    leg_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    first_token_at: float | None = None

    @property
    def turn_id(self) -> str:
        return self.machine.plan.turn_id


class ClientConnection:
    def __init__(
        self, state: EdgeState, ws: ServerConnection, log: logging.LoggerAdapter[logging.Logger]
    ) -> None:
        self._state = state
        self._ws = ws
        self._log = log
        self._outbox = Outbox()
        self._session_id: str | None = None
        # This connection's copy of its session's settings: one store read per
        # connection and session, one write when they change.
        self._settings: SessionSettings | None = None
        self._subscription: Subscription | None = None
        self._turn: _Turn | None = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        edge = state.config.edge
        self._messages = RateLimiter(edge.messages_per_minute)
        self._cancels = RateLimiter(edge.cancels_per_minute)
        self._close_code: tuple[int, str] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._recorder = state.recorder.connection()

    @property
    def turn_running(self) -> bool:
        return self._turn is not None and not self._turn.machine.finished

    # --- lifecycle ------------------------------------------------------------

    async def serve(self) -> None:
        """Run until the client goes away, then cancel whatever it left running."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                writer = self._writer = group.create_task(self._write_loop())
                try:
                    await self._read_loop()
                finally:
                    await self._end_turn(reason="disconnect")
                    for task in list(self._tasks):
                        task.cancel()
                    self._outbox.close()
                await writer
        finally:
            if self._subscription is not None:
                await self._unsubscribe()
        if self._close_code is not None:
            await self._ws.close(*self._close_code)

    async def shutdown(self, timeout_s: float) -> None:
        """Let the running turn finish within ``timeout_s``, then end it and close 1001."""
        turn = self._turn
        if turn is not None and not turn.machine.finished:
            try:
                async with asyncio.timeout(timeout_s):
                    await turn.ended.wait()
            except TimeoutError:
                await self._perform(
                    turn,
                    turn.machine.fail(
                        errors.SERVER_SHUTTING_DOWN, "the server is restarting; please reconnect"
                    ),
                )
        self._close_code = (1001, "server shutting down")
        self._outbox.close()
        if self._writer is not None:
            # The last frames (the turn's error and done) go out before the close.
            await asyncio.wait({self._writer}, timeout=1.0)
        await self._ws.close(1001, "server shutting down")

    async def bus_lost(self) -> None:
        """The bus went away: the running turn cannot finish, so end it with an error."""
        turn = self._turn
        if turn is not None and not turn.machine.finished:
            await self._perform(
                turn,
                turn.machine.fail(
                    errors.BUS_UNAVAILABLE, "the message bus went away; please retry"
                ),
            )

    # --- reading --------------------------------------------------------------

    async def _read_loop(self) -> None:
        idle_s = self._state.config.edge.idle_timeout_s
        while True:
            try:
                async with asyncio.timeout(idle_s if idle_s > 0 else None):
                    data = await self._ws.recv()
            except TimeoutError:
                if self._turn is not None and not self._turn.machine.finished:
                    continue  # waiting on a reply is not idleness
                self._log.info("closing idle connection after %.0f s", idle_s)
                self._close_code = (IDLE_CLOSE_CODE, "idle timeout")
                return
            except ConnectionClosed:
                return
            self._recorder.frame(data)
            if not self._messages.allow():
                self._error(errors.RATE_LIMITED, "too many messages; slow down")
                continue
            try:
                message = self._state.protocol.parse(data)
            except ProtocolError as exc:
                self._log.info("bad message: %s", exc.code)
                self._error(exc.code, exc.message)
                continue
            if await self._handle(message):
                return

    async def _handle(self, message: ClientMessage) -> bool:
        """Act on one message; True when the connection should close."""
        match message:
            case StartMessage():
                await self._start_turn(message)
            case CancelMessage():
                if not self._cancels.allow():
                    self._error(errors.RATE_LIMITED, "too many cancels; slow down")
                    return False
                await self._end_turn(reason="cancel")
                self._outbox.push(frames.done(cancelled=True))
            case WarmPersonaMessage() | WarmHistoryMessage():
                self._spawn(self._warm(message))
            case SetPersonaMessage():
                await self._set_persona(message)
            case PingMessage():
                self._outbox.push(frames.pong())
            case EndMessage():
                was_running = await self._end_turn(reason="end")
                self._outbox.push(frames.done(cancelled=True) if was_running else frames.done())
                self._close_code = (1000, "end")
                return True
        return False

    # --- turns ----------------------------------------------------------------

    async def _start_turn(self, message: StartMessage) -> None:
        state = self._state
        if state.shutting_down:
            self._error(errors.SERVER_SHUTTING_DOWN, "the server is restarting; please reconnect")
            return
        session_id = message.session_id
        known = self._settings if session_id == self._session_id else None
        settings = known or await state.sessions.get(session_id)
        if settings is None:
            settings = new_session(state.rng, datetime.now())
        updated, changed = _apply_persona(settings, message)
        if updated.assistant_gender is None:
            self._error(
                errors.MISSING_FIELD,
                "assistant_gender is required on a session's first start: woman or man",
            )
            return
        # Only a start that will run barges in: a rejected one leaves the turn alone.
        await self._end_turn(reason="barge_in")
        if known is None or changed:
            await state.sessions.put(session_id, updated)
        settings = updated
        if session_id != self._session_id:
            await self._subscribe(session_id)
        self._settings = settings

        models = state.config.models
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
        turn = _Turn(machine=TurnMachine(plan), start=message, settings=settings, log=log)
        self._outbox.push(
            frames.ack_start(
                session_id=session_id,
                seed=settings.seed,
                now=settings.now,
                assistant_gender=settings.assistant_gender,
                persona_style=settings.persona_style,
                persona_text_override=settings.persona_text is not None,
                chat_model=state.config.chat.model if models.chat else None,
                tool_model=state.config.tool.model if models.tool else None,
                turn_id=turn_id,
            )
        )
        self._turn = turn
        self._recorder.turn_started(session_id, turn_id, settings)
        log.info(
            "turn start (%s%s)",
            models.deploy,
            ", concurrent" if models.concurrent_model_call else "",
        )
        assert self._group is not None
        turn.task = self._group.create_task(self._run_turn(turn))

    async def _run_turn(self, turn: _Turn) -> None:
        edge = self._state.config.edge
        try:
            async with asyncio.TaskGroup() as group:
                turn.group = group
                await self._perform(turn, turn.machine.begin())
                while not turn.machine.finished:
                    try:
                        async with asyncio.timeout(_TICK_S):
                            await turn.ended.wait()
                    except TimeoutError:
                        await self._check_deadlines(turn, edge.event_timeout_s, edge.turn_timeout_s)
                for task in list(turn.leg_tasks):  # start requests still waiting on a reply
                    task.cancel()
        finally:
            turn.ended.set()
            outcome = turn.machine.outcome
            code = turn.machine.error_code
            self._recorder.turn_ended(turn.machine.plan.session_id, turn.turn_id, outcome, code)
            self._state.outcomes[code or outcome] += 1
            self._state.metrics.turns.labels(code or outcome).inc()
            turn.log.info(
                "turn %s in %.0f ms%s",
                "done" if outcome == "completed" else outcome,
                (time.monotonic() - turn.started_at) * 1000,
                f" ({code})" if code else "",
            )
            if self._turn is turn:
                self._turn = None

    async def _check_deadlines(
        self, turn: _Turn, event_timeout_s: float, turn_timeout_s: float
    ) -> None:
        now = time.monotonic()
        machine = turn.machine
        for kind in machine.running_legs():
            actor_id = turn.actors.get(kind)
            if actor_id is not None and not self._state.registry.is_alive(actor_id, now):
                await self._perform(
                    turn,
                    machine.fail(
                        errors.ACTOR_LOST, f"the {kind} actor stopped responding; please retry"
                    ),
                )
                return
        if now - turn.started_at > turn_timeout_s:
            await self._perform(
                turn,
                machine.fail(
                    errors.TURN_TIMEOUT, f"the turn took longer than {turn_timeout_s:.0f} s"
                ),
            )
        elif machine.running_legs() and now - turn.last_event_at > event_timeout_s:
            await self._perform(
                turn,
                machine.fail(
                    errors.TURN_TIMEOUT, f"no reply from the actors for {event_timeout_s:.0f} s"
                ),
            )

    async def _end_turn(self, *, reason: str) -> bool:
        """Stop the running turn (cancel, barge-in, disconnect); True if one was running."""
        turn = self._turn
        if turn is None:
            return False
        self._turn = None
        running = not turn.machine.finished
        if running:
            turn.log.info("turn cancelled (%s)", reason)
            self._state.metrics.cancels.labels(reason).inc()
            await self._perform(turn, turn.machine.cancel(), reason=reason)
        turn.ended.set()
        if turn.task is not None:
            turn.task.cancel()
        return running

    async def _perform(self, turn: _Turn, actions: list[Action], reason: str = "cancel") -> None:
        for action in actions:
            match action:
                case SendToken(text=text):
                    if self._turn is turn:
                        if turn.first_token_at is None:
                            turn.first_token_at = time.monotonic()
                            ttft = turn.first_token_at - turn.started_at
                            self._state.recent_ttft.append(ttft)
                            self._state.metrics.ttft.observe(ttft)
                        self._outbox.push_token(text)
                case SendFrame(frame=frame):
                    if self._turn is turn:
                        self._count(frame, turn)
                        self._outbox.push(frame)
                case StartLeg(kind=kind):
                    if turn.group is not None:
                        task = turn.group.create_task(self._start_leg(turn, kind))
                        turn.leg_tasks.add(task)
                        task.add_done_callback(turn.leg_tasks.discard)
                case CancelLegs():
                    await self._publish_cancel(turn, reason)
        if turn.machine.finished:
            turn.ended.set()

    async def _start_leg(self, turn: _Turn, kind: ActorKind) -> None:
        state = self._state
        plan = turn.machine.plan
        start = turn.start
        direct: str | None = None
        if kind == "tool":
            subject = subjects.tool_start(plan.session_id)
            event: ToolStart | ChatStart = ToolStart(
                plan.session_id,
                plan.turn_id,
                user_utterance=start.user_utterance,
                history_text=start.history_text,
            )
        else:
            subject = subjects.chat_start(plan.session_id)
            if (actor := self._affine_chat_actor()) is not None:
                direct = subjects.chat_start_at(plan.session_id, actor)
            event = ChatStart(
                plan.session_id,
                plan.turn_id,
                user_utterance=start.user_utterance,
                persona=turn.settings.persona(),
                history_text=start.history_text,
                seed=turn.settings.seed,
            )
        self._recorder.leg_started(kind, event)
        actions: list[Action] = []
        if not state.nc.is_connected:
            actions = turn.machine.fail(
                errors.BUS_UNAVAILABLE, "the message bus is unavailable; please retry"
            )
        else:
            try:
                msg = await self._request(
                    direct, subject, state.codec.encode(event), state.config.edge.start_timeout_s
                )
                reply = state.codec.decode_reply(msg.data)
            except NoRespondersError:
                actions = turn.machine.fail(
                    errors.NO_ACTOR_AVAILABLE, f"no {kind} actor is running"
                )
            except (NatsTimeoutError, TimeoutError):
                actions = turn.machine.fail(
                    errors.NO_ACTOR_AVAILABLE, f"no {kind} actor answered in time"
                )
            except (ConnectionClosedError, BusDecodeError) as exc:
                turn.log.warning("start of %s leg failed: %r", kind, exc)
                actions = turn.machine.fail(
                    errors.BUS_UNAVAILABLE, "the message bus is unavailable; please retry"
                )
            else:
                match reply:
                    case Accepted(actor_id=actor_id):
                        turn.actors[kind] = actor_id
                        turn.log.debug("%s leg accepted by %s", kind, actor_id)
                        if kind == "chat":
                            await self._remember_chat_actor(plan.session_id, actor_id)
                    case Rejected(code=code, message=text):
                        actions = turn.machine.fail(code, text)
                    case _:
                        actions = turn.machine.fail(errors.INTERNAL_ERROR, "unexpected reply")
        if actions:
            await self._perform(turn, actions)

    async def _request(
        self, direct: str | None, shared: str, payload: bytes, timeout_s: float
    ) -> Msg:
        """Ask the session's own actor when it has one, else (or if it is gone) any."""
        nc = self._state.nc
        if direct is not None:
            try:
                return await nc.request(direct, payload, timeout=timeout_s)
            except NoRespondersError:
                self._log.info("session's chat actor is gone; routing to any")
        return await nc.request(shared, payload, timeout=timeout_s)

    def _affine_chat_actor(self) -> str | None:
        """The live chat actor that holds this session's prefixes, if any."""
        actor = self._settings.chat_actor if self._settings is not None else None
        if actor is None:
            return None
        live = {s.heartbeat.actor_id for s in self._state.registry.live("chat")}
        return actor if actor in live else None

    async def _remember_chat_actor(self, session_id: str, actor_id: str) -> None:
        settings = self._settings
        if settings is None or self._session_id != session_id or not actor_id:
            return
        if settings.chat_actor != actor_id:
            self._settings = msgspec.structs.replace(settings, chat_actor=actor_id)
            await self._state.sessions.put(session_id, self._settings)

    async def _publish_cancel(self, turn: _Turn, reason: str) -> None:
        plan = turn.machine.plan
        payload = self._state.codec.encode(Cancel(plan.session_id, plan.turn_id, reason=reason))
        try:
            await self._state.nc.publish(subjects.cancel(plan.session_id), payload)
        except ConnectionClosedError:
            turn.log.warning("could not publish cancel: bus closed")

    # --- bus ------------------------------------------------------------------

    async def _subscribe(self, session_id: str) -> None:
        if self._subscription is not None:
            await self._unsubscribe()
        self._session_id = session_id
        self._settings = None
        self._subscription = await self._state.nc.subscribe(
            subjects.session_out(session_id), cb=self._on_bus_message
        )

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        try:
            await subscription.unsubscribe()
        except (ConnectionClosedError, Exception) as exc:
            self._log.debug("unsubscribe failed: %r", exc)

    async def _on_bus_message(self, msg: Msg) -> None:
        try:
            event = self._state.codec.decode_outbound(msg.data)
        except BusDecodeError as exc:
            self._log.warning("dropped malformed bus message on %s: %s", msg.subject, exc)
            self._state.metrics.bus_drops.inc()
            return
        turn = self._turn
        if turn is None or event.turn_id != turn.turn_id:
            return  # an event of a finished or cancelled turn: never reaches the client
        turn.last_event_at = time.monotonic()
        await self._perform(turn, turn.machine.on_event(event))

    # --- warm and persona -----------------------------------------------------

    async def _warm(self, message: WarmPersonaMessage | WarmHistoryMessage) -> None:
        state = self._state
        if not state.config.models.chat:
            self._error(errors.NO_ACTOR_AVAILABLE, "no chat model is deployed to warm")
            return
        session_id = self._session_id or f"warm-{uuid.uuid4().hex}"
        settings = self._settings or (
            (await state.sessions.get(session_id)) if self._session_id else None
        )
        settings = settings or SessionSettings()
        if isinstance(message, WarmPersonaMessage):
            settings, _ = _apply_persona(settings, message)
            event = Warm(
                session_id, uuid.uuid4().hex, segment="persona", persona=settings.persona()
            )
        else:
            event = Warm(
                session_id,
                uuid.uuid4().hex,
                segment="history",
                persona=settings.persona(),
                history_text=message.history_text,
            )
        actor = self._affine_chat_actor() if self._session_id else None
        try:
            msg = await self._request(
                subjects.chat_warm_at(session_id, actor) if actor else None,
                subjects.chat_warm(session_id),
                state.codec.encode(event),
                max(state.config.edge.event_timeout_s, 1.0),
            )
            reply = state.codec.decode_reply(msg.data)
        except NoRespondersError:
            self._error(errors.NO_ACTOR_AVAILABLE, "no chat actor is running")
            return
        except (NatsTimeoutError, TimeoutError):
            self._error(errors.TURN_TIMEOUT, "the chat actor did not warm in time")
            return
        except (ConnectionClosedError, BusDecodeError):
            self._error(errors.BUS_UNAVAILABLE, "the message bus is unavailable; please retry")
            return
        match reply:
            case Warmed(segment=segment, bytes=size, actor_id=warmed_by):
                await self._remember_chat_actor(session_id, warmed_by)
                self._outbox.push(frames.warmed(segment, size))
            case Rejected(code=code, message=text):
                self._error(code, text)
            case _:
                self._error(errors.INTERNAL_ERROR, "unexpected reply to warm")

    async def _set_persona(self, message: SetPersonaMessage) -> None:
        state = self._state
        session_id = message.session_id or self._session_id
        if session_id is None:
            self._error(errors.NO_SESSION, "send 'start' (or set_persona with a session_id) first")
            return
        known = self._settings if session_id == self._session_id else None
        settings = known or await state.sessions.get(session_id)
        if settings is None:
            settings = new_session(state.rng, datetime.now())
        settings, changed = _apply_persona(settings, message)
        await state.sessions.put(session_id, settings)
        if self._session_id is None:
            await self._subscribe(session_id)  # no turn can be running yet
        if session_id == self._session_id:
            self._settings = settings
        # Another session's settings are stored, but this connection stays on its own
        # session: switching would strand the running turn's events.
        self._outbox.push(
            frames.ack_set_persona(
                session_id=session_id,
                changed=changed,
                assistant_gender=settings.assistant_gender,
                persona_style=settings.persona_style,
                persona_text_override=settings.persona_text is not None,
            )
        )

    # --- writing --------------------------------------------------------------

    async def _write_loop(self) -> None:
        flush_s = self._state.config.edge.stream_flush_ms / 1000.0
        encode = self._state.encoder.encode
        tokens = self._state.metrics.tokens
        while (frame := await self._outbox.get(flush_s)) is not None:
            if frame["type"] == "token":
                tokens.inc()
            try:
                await self._ws.send(encode(frame))
            except ConnectionClosed:
                return

    def _error(self, code: str, message: str) -> None:
        frame = frames.error(code, message)
        self._recorder.error(code)
        self._count(frame, None)
        self._outbox.push(frame)

    def _count(self, frame: frames.Frame, turn: _Turn | None) -> None:
        kind = frame["type"]
        if kind == "error":
            self._state.metrics.errors.labels(frame["error_code"]).inc()
        elif kind == "toolcall" and turn is not None:
            elapsed = time.monotonic() - turn.started_at
            self._state.recent_toolcall.append(elapsed)
            self._state.metrics.toolcall.observe(elapsed)

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        assert self._group is not None
        task = self._group.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _apply_persona(
    settings: SessionSettings,
    message: StartMessage | SetPersonaMessage | WarmPersonaMessage,
) -> tuple[SessionSettings, dict[str, object]]:
    """Session settings with the message's persona fields applied, and what changed."""
    changed: dict[str, object] = {}
    updates: dict[str, object] = {}
    if message.assistant_gender is not None:
        updates["assistant_gender"] = normalize_gender(message.assistant_gender)
    if message.persona_style is not None and message.persona_style.strip():
        updates["persona_style"] = message.persona_style.strip()
    if message.user_identity is not None and message.user_identity.strip():
        updates["user_identity"] = message.user_identity.strip()
    persona_text = message.persona_text
    if persona_text is not msgspec.UNSET:
        updates["persona_text"] = persona_text or None
    for key, value in updates.items():
        if getattr(settings, key) != value:
            changed[key if key != "persona_text" else "persona_text_override"] = (
                value if key != "persona_text" else value is not None
            )
    if not updates:
        return settings, changed
    return msgspec.structs.replace(settings, **updates), changed
