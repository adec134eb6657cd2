"""One turn, without I/O.

A turn has up to two legs: the tool leg (Hammer decision) and the chat leg (the
reply). ``TurnMachine`` takes bus events and returns actions for the connection to
carry out. It holds the ordering promises of the protocol: the toolcall frame
precedes the first token, events of other turns or repeated sequence numbers are
dropped, a sequence number that jumps ahead is a fault of its leg (an event was
lost, so the text would be wrong), and every turn ends in exactly one ``done``
frame, whatever happened.

``Turn`` wraps the machine with what the bus adds: which actor accepted each leg
(only that actor's events reach the machine; events that arrive before the
acceptance is known are held, bounded, and replayed), the turn's deadlines, and
what an actor's loss or restart does to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from bus import codes
from bus.events import ActorKind, Done, Error, OutboundEvent, Token, ToolCall
from edge import frames

__all__ = [
    "Action",
    "CancelLegs",
    "SendFrame",
    "SendToken",
    "StartLeg",
    "Turn",
    "TurnMachine",
    "TurnOutcome",
    "TurnPlan",
    "leg_of",
]

TurnOutcome = Literal["running", "completed", "cancelled", "failed"]
# Events held per leg until its acceptance is known: a start's reply and the leg's
# first events travel on different subscriptions, so a few can arrive first. One
# more is dropped, and the seq gap it leaves fails the leg.
HELD_PER_LEG: Final = 256


@dataclass(frozen=True, slots=True)
class SendFrame:
    frame: frames.Frame


@dataclass(frozen=True, slots=True)
class SendToken:
    """A text delta; the connection may merge consecutive ones when the client lags."""

    text: str


@dataclass(frozen=True, slots=True)
class StartLeg:
    kind: ActorKind


@dataclass(frozen=True, slots=True)
class CancelLegs:
    kinds: tuple[ActorKind, ...]


Action = SendFrame | SendToken | StartLeg | CancelLegs


@dataclass(frozen=True, slots=True)
class TurnPlan:
    session_id: str
    turn_id: str
    tool: bool
    chat: bool
    concurrent: bool


@dataclass(slots=True)
class _Leg:
    started: bool = False
    done: bool = False
    last_seq: int = 0
    usage: dict[str, int] = field(default_factory=dict)


class TurnMachine:
    def __init__(self, plan: TurnPlan) -> None:
        self.plan = plan
        self.outcome: TurnOutcome = "running"
        self.error_code: str | None = None
        self._legs: dict[ActorKind, _Leg] = {"tool": _Leg(), "chat": _Leg()}
        self._decided = not plan.tool  # no tool leg: nothing to wait for
        self._held: list[str] = []
        self._text: list[str] = []

    @property
    def finished(self) -> bool:
        return self.outcome != "running"

    @property
    def text(self) -> str:
        return "".join(self._text)

    def running_legs(self) -> tuple[ActorKind, ...]:
        return tuple(k for k, leg in self._legs.items() if leg.started and not leg.done)

    def begin(self) -> list[Action]:
        plan = self.plan
        if plan.tool and plan.chat and not plan.concurrent:
            kinds: tuple[ActorKind, ...] = ("tool",)
        else:
            kinds = tuple(k for k in ("tool", "chat") if getattr(plan, k))
        return [self._start(k) for k in kinds]

    def on_event(self, event: OutboundEvent) -> list[Action]:
        if self.finished or event.turn_id != self.plan.turn_id:
            return []
        match event:
            case Token():
                leg = self._legs["chat"]
            case ToolCall():
                leg = self._legs["tool"]
            case Done() | Error():
                leg = self._legs[event.kind]
            case _:
                return []
        if event.seq <= leg.last_seq or leg.done:
            return []  # a replay or a straggler after the leg ended
        if event.seq != leg.last_seq + 1:
            kind = "chat" if isinstance(event, Token) else "tool"
            if isinstance(event, Done | Error):
                kind = event.kind
            # The leg is still running: fail() cancels it with the rest.
            return self.fail(
                codes.ACTOR_ERROR,
                f"the {kind} actor's stream skipped from event {leg.last_seq} to {event.seq}; "
                "part of the reply was lost, please retry",
            )
        leg.last_seq = event.seq
        match event:
            case Token(text=text):
                return self._on_token(text)
            case ToolCall():
                return self._on_toolcall(event)
            case Error(code=code, message=message):
                leg.done = True
                return self.fail(code, message)
            case Done():
                return self._on_done(event, leg)
        return []

    def fail(self, code: str, message: str) -> list[Action]:
        """End the turn with an error frame and a done frame; cancel what still runs."""
        if self.finished:
            return []
        self.outcome = "failed"
        self.error_code = code
        actions: list[Action] = []
        running = self.running_legs()
        if running:
            actions.append(CancelLegs(running))
        actions.append(SendFrame(frames.error(code, message)))
        done = frames.done(usage=self._usage())
        done["error_code"] = code
        actions.append(SendFrame(done))
        return actions

    def cancel(self) -> list[Action]:
        """The client cancelled or barged in; the connection decides what to tell it."""
        if self.finished:
            return []
        self.outcome = "cancelled"
        running = self.running_legs()
        return [CancelLegs(running)] if running else []

    def _start(self, kind: ActorKind) -> StartLeg:
        self._legs[kind].started = True
        return StartLeg(kind)

    def _on_token(self, text: str) -> list[Action]:
        self._text.append(text)
        if not self._decided:
            self._held.append(text)
            return []
        return [SendToken(text)]

    def _on_toolcall(self, event: ToolCall) -> list[Action]:
        if self._decided:
            return []
        self._decided = True
        actions: list[Action] = [SendFrame(frames.toolcall(event.status, _raw_field(event)))]
        if self._held:
            actions.append(SendToken("".join(self._held)))
            self._held.clear()
        chat = self._legs["chat"]
        if self.plan.chat and not chat.started:
            actions.append(self._start("chat"))
        elif not self.plan.chat or chat.done:
            actions.extend(self._complete())
        return actions

    def _on_done(self, event: Done, leg: _Leg) -> list[Action]:
        leg.done = True
        leg.usage = {
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": event.completion_tokens,
            "cached_tokens": event.cached_tokens,
        }
        if event.reason in ("cancelled", "error"):
            return self.fail(
                codes.ACTOR_ERROR, f"the {event.kind} actor ended the turn ({event.reason})"
            )
        if event.kind == "tool":
            if not self._decided:
                return self.fail(codes.ACTOR_ERROR, "the tool actor ended without a decision")
            return []
        if self._decided:
            return self._complete()
        return []  # concurrent mode: the reply is ready before the decision

    def _complete(self) -> list[Action]:
        self.outcome = "completed"
        return [
            SendFrame(frames.final(" ".join(self.text.split()))),
            SendFrame(frames.done(usage=self._usage())),
        ]

    def _usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = dict(self._legs["chat"].usage)
        tool = self._legs["tool"].usage
        if tool:
            usage["tool_prompt_tokens"] = tool["prompt_tokens"]
            usage["tool_completion_tokens"] = tool["completion_tokens"]
        return usage


def leg_of(event: OutboundEvent) -> ActorKind | None:
    """The leg an outbound event belongs to; None for events that belong to none."""
    match event:
        case Token():
            return "chat"
        case ToolCall():
            return "tool"
        case Done() | Error():
            return event.kind
    return None


@dataclass(frozen=True, slots=True)
class _Owner:
    actor_id: str
    instance: str


class Turn:
    """A running turn: its machine, the actor that owns each leg, its deadlines.

    Times are the caller's clock (``time.monotonic()``), passed in, so the turn is
    tested without sleeping.
    """

    def __init__(
        self,
        plan: TurnPlan,
        *,
        now: float,
        event_timeout_s: float,
        turn_timeout_s: float,
    ) -> None:
        self.machine = TurnMachine(plan)
        self.started_at = now
        self.last_event_at = now
        self._event_timeout_s = event_timeout_s
        self._turn_timeout_s = turn_timeout_s
        self._owners: dict[ActorKind, _Owner] = {}
        self._held: dict[ActorKind, list[tuple[str, OutboundEvent]]] = {}

    @property
    def turn_id(self) -> str:
        return self.machine.plan.turn_id

    @property
    def finished(self) -> bool:
        return self.machine.finished

    def owner(self, kind: ActorKind) -> str | None:
        owner = self._owners.get(kind)
        return owner.actor_id if owner is not None else None

    def begin(self) -> list[Action]:
        return self.machine.begin()

    def accepted(self, kind: ActorKind, actor_id: str, instance: str, now: float) -> list[Action]:
        """``actor_id`` took the leg: replay what it sent before we knew, drop the rest."""
        if self.finished or kind in self._owners:
            return []
        self._owners[kind] = _Owner(actor_id, instance)
        self.last_event_at = now
        actions: list[Action] = []
        for sender, event in self._held.pop(kind, ()):
            if sender == actor_id:
                actions += self.machine.on_event(event)
        return actions

    def on_event(self, sender: str, event: OutboundEvent, now: float) -> list[Action]:
        """One bus event, sent by actor ``sender`` (from the subject, which the
        sender's bus permission vouches for)."""
        if event.turn_id != self.turn_id or self.finished:
            return []
        kind = leg_of(event)
        if kind is None:
            return []
        owner = self._owners.get(kind)
        if owner is None:
            if kind in self.machine.running_legs():
                held = self._held.setdefault(kind, [])
                if len(held) < HELD_PER_LEG:
                    held.append((sender, event))
            return []
        if sender != owner.actor_id:
            return []  # not the actor that accepted this leg
        self.last_event_at = now
        return self.machine.on_event(event)

    def restarted(self, actor_id: str, instance: str) -> list[Action]:
        """``actor_id`` now runs as ``instance``: a leg the old instance held is gone."""
        for kind in self.machine.running_legs():
            owner = self._owners.get(kind)
            if (
                owner is not None
                and owner.actor_id == actor_id
                and owner.instance
                and instance
                and owner.instance != instance
            ):
                return self.machine.fail(
                    codes.ACTOR_LOST, f"the {kind} actor restarted; please retry"
                )
        return []

    def expire(self, now: float, is_alive: Callable[[str], bool]) -> list[Action]:
        """The turn's deadlines and its actors' liveness, checked at ``now``."""
        if self.finished:
            return []
        running = self.machine.running_legs()
        for kind in running:
            owner = self._owners.get(kind)
            if owner is not None and not is_alive(owner.actor_id):
                return self.machine.fail(
                    codes.ACTOR_LOST, f"the {kind} actor stopped responding; please retry"
                )
        if now - self.started_at > self._turn_timeout_s:
            return self.machine.fail(
                codes.TURN_TIMEOUT, f"the turn took longer than {self._turn_timeout_s:.0f} s"
            )
        if running and now - self.last_event_at > self._event_timeout_s:
            return self.machine.fail(
                codes.TURN_TIMEOUT, f"no reply from the actors for {self._event_timeout_s:.0f} s"
            )
        return []


def _raw_field(event: ToolCall) -> Any:
    """What the original server put in ``raw``: the parsed list when it parses."""
    if event.calls:
        return [{"name": c.name, "arguments": c.arguments} for c in event.calls]
    try:
        parsed = json.loads(event.raw)
    except ValueError:
        return event.raw
    return parsed if isinstance(parsed, list) else event.raw
