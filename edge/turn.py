"""One turn's state machine, without I/O.

A turn has up to two legs: the tool leg (Hammer decision) and the chat leg (the
reply). The machine takes bus events and returns actions for the connection to
carry out. It holds the ordering promises of the protocol: the toolcall frame
precedes the first token, events of other turns or repeated sequence numbers are
dropped, and every turn ends in exactly one ``done`` frame, whatever happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from bus.events import ActorKind, Done, Error, OutboundEvent, Token, ToolCall
from edge import frames

__all__ = [
    "Action",
    "CancelLegs",
    "SendFrame",
    "SendToken",
    "StartLeg",
    "TurnMachine",
    "TurnOutcome",
    "TurnPlan",
]

TurnOutcome = Literal["running", "completed", "cancelled", "failed"]


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
                "actor_error", f"the {event.kind} actor ended the turn ({event.reason})"
            )
        if event.kind == "tool":
            if not self._decided:
                return self.fail("actor_error", "the tool actor ended without a decision")
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


def _raw_field(event: ToolCall) -> Any:
    """What the original server put in ``raw``: the parsed list when it parses."""
    if event.calls:
        return [{"name": c.name, "arguments": c.arguments} for c in event.calls]
    try:
        parsed = json.loads(event.raw)
    except ValueError:
        return event.raw
    return parsed if isinstance(parsed, list) else event.raw
