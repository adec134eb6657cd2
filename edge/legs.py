"""The edge's client for actor requests: start a leg, warm a prefix, cancel a turn.

It places each leg by capacity (``edge.routing``: the session's own chat actor,
which holds its prefix cache, while it lives and has room, else the least-loaded
live one), holds legs that find every actor full in a bounded queue
(``edge.admission``), and maps every way a request can fail to an error code, in
one place:

==================================  ==============================================
what happened                       code
==================================  ==============================================
bus down (not connected, closed)    ``bus_unavailable``
no actor of the kind subscribed     ``no_actor_available`` (NATS "no responders")
no answer within the start timeout  ``no_actor_available``: nothing accepted the leg
every actor full past the deadline  ``server_at_capacity`` (or the queue is full)
the actor refused (``Rejected``)    the actor's code (``actor_draining``...), if known
an unreadable or unexpected reply   ``actor_error``
==================================  ==============================================

The rule behind the timeout row: before an actor has accepted a leg, every failure
that is not the bus's own is "no actor available"; once one has, the turn's
deadlines (``turn_timeout``) and the actor's heartbeats (``actor_lost``) take over.
A warm follows the same rule. An actor's ``actor_busy`` refusal (its heartbeat was
stale, or another edge took the room) never reaches the client: the leg is placed
again, within the same admission deadline.

A chat leg placed on an actor goes to that actor's own subject (``chat_start_at``),
home or not: the queue group would pick a replica at random, maybe the full one,
and the edge's count of what it placed where would be wrong. If that actor is gone
("no responders"), the queue group gets it. With ``edge.chat_routing = "queue"``
every chat leg goes to the queue group (placement still decides admission) and no
session has a home. Tool legs always go to the queue group: no tool actor holds a
session's cache.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from bus import codes, subjects
from bus.codec import BusDecodeError, Codec
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
)
from edge.admission import Admission
from edge.messages import StartMessage
from edge.recorder import Recorder
from edge.registry import ActorRegistry
from edge.routing import AllFull, LoadBook, Placement, ToActor, pick
from edge.sessions import SessionSettings

__all__ = ["LegClient", "LegRefused"]


@dataclass(frozen=True, slots=True)
class LegRefused:
    """A request that no actor took: the code and message the client gets."""

    code: str
    message: str


class LegClient:
    def __init__(
        self,
        nc: NatsClient,
        codec: Codec,
        registry: ActorRegistry,
        *,
        edge_id: str,
        start_timeout_s: float,
        warm_timeout_s: float,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
        admission: Admission,
        recorder: Recorder | None = None,
        affine: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self._nc = nc
        self._codec = codec
        self._registry = registry
        self.edge_id = edge_id
        self._start_timeout_s = start_timeout_s
        self._warm_timeout_s = warm_timeout_s
        self._log = log
        self._recorder = recorder or Recorder.off()
        self.admission = admission
        self._affine = affine
        self._rng = rng or random.Random()
        # One per kind: a book keeps only the actors among the beats it is given.
        self._books: dict[ActorKind, LoadBook] = {"tool": LoadBook(), "chat": LoadBook()}

    @property
    def connected(self) -> bool:
        return self._nc.is_connected

    def home(self, settings: SessionSettings | None) -> str | None:
        """The live chat actor that holds the session's prefixes, if any (never, when
        routing by queue group)."""
        actor = settings.chat_actor if settings is not None else None
        if actor is None or not self._affine:
            return None
        live = {s.heartbeat.actor_id for s in self._registry.live("chat")}
        return actor if actor in live else None

    async def start(
        self,
        kind: ActorKind,
        *,
        session_id: str,
        turn_id: str,
        message: StartMessage,
        settings: SessionSettings,
    ) -> Accepted | LegRefused:
        """Ask an actor of ``kind`` to run its leg of the turn; who accepted, or why none."""
        event: ToolStart | ChatStart
        if kind == "tool":
            shared = subjects.tool_start(session_id)
            event = ToolStart(
                session_id,
                turn_id,
                user_utterance=message.user_utterance,
                history_text=message.history_text,
                edge_id=self.edge_id,
            )
        else:
            shared = subjects.chat_start(session_id)
            event = ChatStart(
                session_id,
                turn_id,
                user_utterance=message.user_utterance,
                persona=settings.persona(),
                history_text=message.history_text,
                seed=settings.seed,
                edge_id=self.edge_id,
            )
        self._recorder.leg_started(kind, event)
        home = self.home(settings) if kind == "chat" else None
        deadline = asyncio.get_running_loop().time() + self.admission.wait_s
        blind_refusal = False
        while True:
            placement = await self.admission.admit(
                kind,
                lambda: self._place(kind, home),
                lambda p: self._unplace(kind, p),
                deadline,
                wait=blind_refusal,
            )
            if isinstance(placement, AllFull):
                return LegRefused(
                    codes.SERVER_AT_CAPACITY, f"every {kind} actor is busy; please retry shortly"
                )
            placed = placement.actor_id if isinstance(placement, ToActor) else None
            direct = None
            if placed is not None and kind == "chat" and self._affine:
                direct = subjects.chat_start_at(session_id, placed)
            reply = await self._request(kind, direct, shared, event, self._start_timeout_s)
            match reply:
                case Accepted(actor_id=actor_id):
                    if actor_id != placed:  # the queue group chose, or the placed one was gone
                        # Counted where it runs before the undo wakes a waiter that
                        # could otherwise be placed on the same room.
                        self._books[kind].placed(actor_id)
                        self._unplace(kind, placement)
                    return reply
                case Rejected(code=codes.ACTOR_BUSY, actor_id=actor_id):
                    self._unplace(kind, placement)
                    self._books[kind].refused(actor_id)
                    blind_refusal = placed is None
                    self._log.debug("%s actor %s was full; placing the leg again", kind, actor_id)
                    continue
            self._unplace(kind, placement)
            match reply:
                case LegRefused():
                    return reply
                case Rejected(code=code, message=text):
                    return _refused(code, text)
            return LegRefused(codes.ACTOR_ERROR, f"unexpected reply to a {kind} start")

    def heard(self, heartbeat: Heartbeat) -> None:
        """An actor's heartbeat (after the registry's): its load is known afresh."""
        self._books[heartbeat.kind].heard(heartbeat.actor_id)
        self.admission.wake(heartbeat.kind)

    def leg_ended(self, actor_id: str, kind: ActorKind) -> None:
        """A leg's ``Done`` from ``actor_id``: a place there is free again."""
        self._books[kind].ended(actor_id)
        self.admission.wake(kind)

    def _place(self, kind: ActorKind, home: str | None) -> Placement:
        book = self._books[kind]
        loads = book.loads(s.heartbeat for s in self._registry.live(kind))
        placement = pick(loads, home, self._rng)
        if isinstance(placement, ToActor):
            book.placed(placement.actor_id)
        return placement

    def _unplace(self, kind: ActorKind, placement: Placement) -> None:
        if isinstance(placement, ToActor):
            self._books[kind].ended(placement.actor_id)
            self.admission.wake(kind)

    async def warm(self, event: Warm, home: str | None) -> Warmed | LegRefused:
        """Prime a chat actor's prefix cache (the session's own actor while it lives)."""
        session_id = event.session_id
        direct = subjects.chat_warm_at(session_id, home) if home is not None else None
        reply = await self._request(
            "chat", direct, subjects.chat_warm(session_id), event, self._warm_timeout_s
        )
        match reply:
            case LegRefused() | Warmed():
                return reply
            case Rejected(code=code, message=text):
                return _refused(code, text)
        return LegRefused(codes.ACTOR_ERROR, "unexpected reply to a warm")

    async def cancel(self, session_id: str, turn_id: str, reason: str) -> None:
        """Tell every actor to stop the turn; a lost cancel is logged, never raised."""
        payload = self._codec.encode(Cancel(session_id, turn_id, reason=reason))
        try:
            await self._nc.publish(subjects.cancel(session_id), payload)
        except (ConnectionClosedError, NatsError) as exc:
            self._log.warning("could not publish cancel: %r", exc)

    async def _request(
        self,
        kind: ActorKind,
        direct: str | None,
        shared: str,
        event: ToolStart | ChatStart | Warm,
        timeout_s: float,
    ) -> Accepted | Rejected | Warmed | LegRefused:
        """One request, with every failure mapped to its code (the module's table)."""
        if not self._nc.is_connected:
            return LegRefused(codes.BUS_UNAVAILABLE, "the message bus is unavailable; please retry")
        payload = self._codec.encode(event)
        try:
            msg = await self._ask(direct, shared, payload, timeout_s)
        except NoRespondersError:
            return LegRefused(codes.NO_ACTOR_AVAILABLE, f"no {kind} actor is running")
        except (NatsTimeoutError, TimeoutError):
            return LegRefused(codes.NO_ACTOR_AVAILABLE, f"no {kind} actor answered in time")
        except (ConnectionClosedError, NatsError) as exc:
            self._log.warning("%s request failed: %r", kind, exc)
            return LegRefused(codes.BUS_UNAVAILABLE, "the message bus is unavailable; please retry")
        try:
            return self._codec.decode_reply(msg.data)
        except BusDecodeError as exc:
            self._log.warning("unreadable reply from a %s actor: %s", kind, exc)
            return LegRefused(codes.ACTOR_ERROR, f"the {kind} actor's reply was unreadable")

    async def _ask(self, direct: str | None, shared: str, payload: bytes, timeout_s: float) -> Msg:
        """Ask the session's own actor when it has one, else (or if it is gone) any."""
        if direct is not None:
            try:
                return await self._nc.request(direct, payload, timeout=timeout_s)
            except NoRespondersError:
                self._log.info("session's chat actor is gone; routing to any")
        return await self._nc.request(shared, payload, timeout=timeout_s)


def _refused(code: str, message: str) -> LegRefused:
    """An actor's refusal as the client sees it: its code, if clients know it."""
    if code not in codes.ALL_CODES:
        return LegRefused(codes.ACTOR_ERROR, f"the actor refused ({code}): {message}")
    return LegRefused(code, message)
