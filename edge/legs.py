"""The edge's client for actor requests: start a leg, warm a prefix, cancel a turn.

It builds the requests, routes a session's chat requests to the actor that holds
its prefix cache while that actor lives (and falls back to the queue group), and
maps every way a request can fail to an error code, in one place:

==================================  ==============================================
what happened                       code
==================================  ==============================================
bus down (not connected, closed)    ``bus_unavailable``
no actor of the kind subscribed     ``no_actor_available`` (NATS "no responders")
no answer within the start timeout  ``no_actor_available``: nothing accepted the leg
the actor refused (``Rejected``)    the actor's code (``actor_busy``...), if known
an unreadable or unexpected reply   ``actor_error``
==================================  ==============================================

The rule behind the timeout row: before an actor has accepted a leg, every failure
that is not the bus's own is "no actor available"; once one has, the turn's
deadlines (``turn_timeout``) and the actor's heartbeats (``actor_lost``) take over.
A warm follows the same rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from bus import codes, subjects
from bus.codec import BusDecodeError, Codec
from bus.events import Accepted, ActorKind, Cancel, ChatStart, Rejected, ToolStart, Warm, Warmed
from edge.messages import StartMessage
from edge.recorder import Recorder
from edge.registry import ActorRegistry
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
        recorder: Recorder | None = None,
    ) -> None:
        self._nc = nc
        self._codec = codec
        self._registry = registry
        self.edge_id = edge_id
        self._start_timeout_s = start_timeout_s
        self._warm_timeout_s = warm_timeout_s
        self._log = log
        self._recorder = recorder or Recorder.off()

    @property
    def connected(self) -> bool:
        return self._nc.is_connected

    def home(self, settings: SessionSettings | None) -> str | None:
        """The live chat actor that holds the session's prefixes, if any."""
        actor = settings.chat_actor if settings is not None else None
        if actor is None:
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
        direct: str | None = None
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
            if (home := self.home(settings)) is not None:
                direct = subjects.chat_start_at(session_id, home)
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
        reply = await self._request(kind, direct, shared, event, self._start_timeout_s)
        match reply:
            case LegRefused() | Accepted():
                return reply
            case Rejected(code=code, message=text):
                return _refused(code, text)
        return LegRefused(codes.ACTOR_ERROR, f"unexpected reply to a {kind} start")

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
