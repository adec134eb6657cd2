"""The sans-I/O turn state machine driven by synthetic bus events; no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.events import Done, Error, OutboundEvent, Token, ToolCall, ToolCallSpec, Warmed
from edge.turn import (
    Action,
    CancelLegs,
    SendFrame,
    SendToken,
    StartLeg,
    Turn,
    TurnMachine,
    TurnPlan,
)

SESSION = "s1"
TURN = "t1"

SEQUENTIAL = TurnPlan(SESSION, TURN, tool=True, chat=True, concurrent=False)
CONCURRENT = TurnPlan(SESSION, TURN, tool=True, chat=True, concurrent=True)
CHAT_ONLY = TurnPlan(SESSION, TURN, tool=False, chat=True, concurrent=False)
TOOL_ONLY = TurnPlan(SESSION, TURN, tool=True, chat=False, concurrent=False)


def toolcall(seq: int = 1, status: str = "no", raw: str = "[]", **kw: Any) -> ToolCall:
    return ToolCall(SESSION, kw.pop("turn_id", TURN), seq, status, raw, **kw)  # type: ignore[arg-type]


def token(seq: int, text: str, turn_id: str = TURN) -> Token:
    return Token(SESSION, turn_id, seq, text)


def done(kind: str, seq: int, reason: str = "stop", *usage: int) -> Done:
    return Done(SESSION, TURN, seq, kind, reason, *usage)  # type: ignore[arg-type]


def error(kind: str, seq: int, code: str = "engine_error", message: str = "boom") -> Error:
    return Error(SESSION, TURN, seq, kind, code, message)  # type: ignore[arg-type]


def started(plan: TurnPlan) -> TurnMachine:
    machine = TurnMachine(plan)
    machine.begin()
    return machine


def feed(machine: TurnMachine, events: Iterable[OutboundEvent]) -> list[Action]:
    actions: list[Action] = []
    for event in events:
        actions += machine.on_event(event)
    return actions


def sent(actions: Iterable[Action]) -> list[dict[str, Any]]:
    return [a.frame for a in actions if isinstance(a, SendFrame)]


def frame_types(actions: Iterable[Action]) -> list[str]:
    return [a.frame["type"] if isinstance(a, SendFrame) else type(a).__name__ for a in actions]


def done_frames(actions: Iterable[Action]) -> list[dict[str, Any]]:
    return [f for f in sent(actions) if f["type"] == "done"]


# --- begin ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "legs"),
    [
        (SEQUENTIAL, ("tool",)),
        (CONCURRENT, ("tool", "chat")),
        (CHAT_ONLY, ("chat",)),
        (TOOL_ONLY, ("tool",)),
        (TurnPlan(SESSION, TURN, tool=False, chat=True, concurrent=True), ("chat",)),
        (TurnPlan(SESSION, TURN, tool=True, chat=False, concurrent=True), ("tool",)),
    ],
)
def test_begin_starts_the_planned_legs(plan: TurnPlan, legs: tuple[str, ...]) -> None:
    """begin() starts the tool leg alone in sequential mode and every planned leg otherwise."""
    machine = TurnMachine(plan)
    assert machine.begin() == [StartLeg(kind) for kind in legs]  # type: ignore[arg-type]
    assert machine.running_legs() == legs
    assert machine.outcome == "running"
    assert not machine.finished


# --- happy paths ----------------------------------------------------------------------


def test_sequential_turn() -> None:
    """Sequential: toolcall frame and chat start on the decision, tokens stream, then final+done."""
    machine = started(SEQUENTIAL)
    assert machine.on_event(toolcall(1)) == [
        SendFrame({"type": "toolcall", "status": "no", "raw": []}),
        StartLeg("chat"),
    ]
    assert machine.running_legs() == ("tool", "chat")
    assert machine.on_event(done("tool", 2, "stop", 30, 1, 0)) == []
    assert machine.running_legs() == ("chat",)
    assert machine.on_event(token(1, "Hi")) == [SendToken("Hi")]
    assert machine.on_event(token(2, " there")) == [SendToken(" there")]
    actions = machine.on_event(done("chat", 3, "stop", 100, 2, 64))
    assert sent(actions) == [
        {"type": "final", "normalized_text": "Hi there"},
        {
            "type": "done",
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 2,
                "cached_tokens": 64,
                "tool_prompt_tokens": 30,
                "tool_completion_tokens": 1,
            },
        },
    ]
    assert machine.outcome == "completed"
    assert machine.finished
    assert machine.error_code is None


def test_concurrent_holds_tokens_until_decision() -> None:
    """Concurrent: tokens before the decision are held, then flushed in one SendToken after it."""
    machine = started(CONCURRENT)
    assert machine.on_event(token(1, "Hel")) == []
    assert machine.on_event(token(2, "lo")) == []
    actions = machine.on_event(toolcall(1, "yes", "[]"))
    assert actions == [
        SendFrame({"type": "toolcall", "status": "yes", "raw": []}),
        SendToken("Hello"),
    ]
    assert machine.on_event(token(3, "!")) == [SendToken("!")]
    assert machine.on_event(done("tool", 2)) == []
    assert frame_types(machine.on_event(done("chat", 4))) == ["final", "done"]
    assert machine.outcome == "completed"
    assert machine.text == "Hello!"


def test_concurrent_decision_without_held_tokens() -> None:
    """Concurrent: a decision before any token sends only the toolcall frame."""
    machine = started(CONCURRENT)
    assert machine.on_event(toolcall(1)) == [
        SendFrame({"type": "toolcall", "status": "no", "raw": []})
    ]
    assert machine.on_event(token(1, "a")) == [SendToken("a")]


def test_concurrent_chat_done_before_decision_completes_after_toolcall() -> None:
    """Concurrent: a reply finished before the decision completes only once the toolcall lands."""
    machine = started(CONCURRENT)
    feed(machine, [token(1, "Sure "), token(2, "thing")])
    assert machine.on_event(done("chat", 3, "stop", 10, 2, 0)) == []
    assert machine.outcome == "running"
    actions = machine.on_event(toolcall(1, "no", "[]"))
    assert frame_types(actions) == ["toolcall", "SendToken", "final", "done"]
    assert actions[1] == SendToken("Sure thing")
    assert sent(actions)[1] == {"type": "final", "normalized_text": "Sure thing"}
    assert machine.outcome == "completed"


def test_chat_only_turn() -> None:
    """Chat-only: tokens stream at once, with no toolcall frame, then final and done."""
    machine = started(CHAT_ONLY)
    assert machine.on_event(token(1, "Yo")) == [SendToken("Yo")]
    actions = machine.on_event(done("chat", 2, "length", 5, 1, 0))
    assert sent(actions) == [
        {"type": "final", "normalized_text": "Yo"},
        {"type": "done", "usage": {"prompt_tokens": 5, "completion_tokens": 1, "cached_tokens": 0}},
    ]
    assert machine.outcome == "completed"


def test_chat_only_ignores_a_stray_toolcall() -> None:
    """Chat-only: a toolcall event (no tool leg planned) sends nothing."""
    machine = started(CHAT_ONLY)
    assert machine.on_event(toolcall(1)) == []
    assert machine.on_event(token(1, "a")) == [SendToken("a")]


def test_tool_only_turn_completes_on_decision() -> None:
    """Tool-only: the decision sends toolcall, an empty final and done, before the tool's Done.

    The turn completes at the toolcall, before the tool leg's Done, so its usage never
    reaches the done frame (``usage`` is ``{}``, as in the original server).
    """
    machine = started(TOOL_ONLY)
    actions = machine.on_event(toolcall(1, "yes", "[]"))
    assert sent(actions) == [
        {"type": "toolcall", "status": "yes", "raw": []},
        {"type": "final", "normalized_text": ""},
        {"type": "done", "usage": {}},
    ]
    assert machine.outcome == "completed"
    assert machine.on_event(done("tool", 2, "stop", 40, 3, 0)) == []


def test_toolcall_precedes_first_token_in_every_plan_with_a_tool() -> None:
    """Whatever the order events arrive in, no token is sent before the toolcall frame."""
    for plan in (SEQUENTIAL, CONCURRENT):
        machine = TurnMachine(plan)
        actions = machine.begin()
        actions += feed(machine, [token(1, "a"), token(2, "b"), toolcall(1), token(3, "c")])
        kinds = frame_types(actions)
        assert "SendToken" in kinds
        assert kinds.index("toolcall") < kinds.index("SendToken")


# --- dropped events -------------------------------------------------------------------


def test_events_for_another_turn_are_dropped() -> None:
    """Events whose turn_id is not this turn's change nothing."""
    machine = started(CHAT_ONLY)
    assert machine.on_event(token(1, "old", turn_id="t0")) == []
    assert machine.on_event(Done(SESSION, "t0", 2, "chat", "stop")) == []
    assert machine.on_event(Error(SESSION, "t0", 3, "chat", "x", "y")) == []
    assert machine.on_event(toolcall(1, turn_id="t0")) == []
    assert machine.outcome == "running"
    assert machine.text == ""
    assert machine.on_event(token(1, "new")) == [SendToken("new")]


@pytest.mark.parametrize("seq", [1, 2, 0, -1])
def test_repeated_or_lower_seq_is_dropped(seq: int) -> None:
    """A token whose seq is not above the leg's last one is a replay and is dropped."""
    machine = started(CHAT_ONLY)
    feed(machine, [token(1, "a"), token(2, "b")])
    assert machine.on_event(token(seq, "dup")) == []
    assert machine.text == "ab"


@pytest.mark.parametrize("first", [2, 5])
def test_a_seq_that_jumps_ahead_fails_the_leg(first: int) -> None:
    """A seq past the next one means events were lost (or forged): the turn fails with
    actor_error, the leg is cancelled, and the stream that follows is ignored."""
    machine = started(CHAT_ONLY)
    assert machine.on_event(token(1, "a")) == [SendToken("a")]
    actions = machine.on_event(token(first + 1, "b"))
    assert actions[0] == CancelLegs(("chat",))
    assert frame_types(actions[1:]) == ["error", "done"]
    assert sent(actions)[0]["error_code"] == "actor_error"
    assert machine.error_code == "actor_error" and machine.text == "a"
    assert machine.on_event(token(first + 2, "c")) == []


def test_a_first_event_past_seq_one_fails_the_leg() -> None:
    """A leg's events are numbered from 1: a first event numbered higher is a gap too."""
    machine = started(CHAT_ONLY)
    assert frame_types(machine.on_event(token(3, "x"))) == ["CancelLegs", "error", "done"]


def test_seq_is_tracked_per_leg() -> None:
    """Tool and chat legs number their events independently."""
    machine = started(CONCURRENT)
    assert machine.on_event(toolcall(1)) != []
    assert machine.on_event(token(1, "a")) == [SendToken("a")]


def test_events_after_failure_are_dropped() -> None:
    """After an Error failed the turn, further errors and dones send nothing."""
    machine = started(CHAT_ONLY)
    first = machine.on_event(error("chat", 1))
    assert len(done_frames(first)) == 1
    assert machine.on_event(error("chat", 2)) == []
    assert machine.on_event(done("chat", 3)) == []


def test_events_after_leg_done_are_dropped() -> None:
    """Once a leg's Done arrived, later events of that leg are stragglers and are dropped."""
    machine = started(CONCURRENT)
    feed(machine, [token(1, "a"), done("chat", 2)])
    assert machine.on_event(token(3, "late")) == []
    assert machine.on_event(error("chat", 4)) == []
    actions = machine.on_event(toolcall(1))
    assert SendToken("a") in actions
    assert machine.text == "a"
    assert machine.outcome == "completed"


def test_tool_events_after_tool_done_are_dropped() -> None:
    """In sequential mode an Error from a tool leg that already ended does not fail the turn."""
    machine = started(SEQUENTIAL)
    feed(machine, [toolcall(1), done("tool", 2)])
    assert machine.on_event(error("tool", 3)) == []
    assert machine.on_event(toolcall(4, "yes")) == []
    assert machine.outcome == "running"


def test_second_toolcall_is_ignored() -> None:
    """Only the first decision is sent; a later toolcall with a higher seq sends nothing."""
    machine = started(CONCURRENT)
    machine.on_event(toolcall(1, "no"))
    assert machine.on_event(toolcall(2, "yes")) == []


def test_warmed_event_is_ignored() -> None:
    """A warmed reply that happens to carry the turn id does nothing to the turn."""
    machine = started(CHAT_ONLY)
    assert machine.on_event(Warmed(SESSION, TURN, "persona", 10)) == []
    assert machine.outcome == "running"


def test_events_after_completion_are_dropped() -> None:
    """After the done frame, nothing of this turn produces another action."""
    machine = started(CHAT_ONLY)
    feed(machine, [token(1, "a"), done("chat", 2)])
    assert feed(machine, [token(3, "b"), error("chat", 4), done("tool", 1), toolcall(1)]) == []
    assert machine.outcome == "completed"


# --- failures -------------------------------------------------------------------------


def test_error_cancels_running_legs() -> None:
    """An Error sends an error frame and a done with error_code, and cancels the other leg."""
    machine = started(CONCURRENT)
    machine.on_event(token(1, "a"))
    actions = machine.on_event(error("tool", 1, "engine_dead", "the engine died"))
    assert actions == [
        CancelLegs(("chat",)),
        SendFrame({"type": "error", "error_code": "engine_dead", "message": "the engine died"}),
        SendFrame({"type": "done", "usage": {}, "error_code": "engine_dead"}),
    ]
    assert machine.outcome == "failed"
    assert machine.error_code == "engine_dead"
    assert machine.finished


def test_error_with_nothing_else_running_cancels_nothing() -> None:
    """Sequential: a tool Error before the chat leg started sends no CancelLegs."""
    machine = started(SEQUENTIAL)
    actions = machine.on_event(error("tool", 1))
    assert frame_types(actions) == ["error", "done"]
    assert machine.running_legs() == ()


def test_chat_error_cancels_a_tool_leg_still_running() -> None:
    """Sequential: a chat Error while the tool leg has not sent its Done cancels the tool leg."""
    machine = started(SEQUENTIAL)
    machine.on_event(toolcall(1))
    actions = machine.on_event(error("chat", 1))
    assert actions[0] == CancelLegs(("tool",))
    assert len(done_frames(actions)) == 1


def test_failure_done_keeps_usage_so_far() -> None:
    """The done frame of a failed turn carries usage of the legs that finished."""
    machine = started(SEQUENTIAL)
    feed(machine, [toolcall(1), done("tool", 2, "stop", 7, 1, 0)])
    (frame,) = done_frames(machine.on_event(error("chat", 1, "oom", "out of memory")))
    assert frame == {
        "type": "done",
        "usage": {"tool_prompt_tokens": 7, "tool_completion_tokens": 1},
        "error_code": "oom",
    }


@pytest.mark.parametrize("reason", ["cancelled", "error"])
@pytest.mark.parametrize("kind", ["tool", "chat"])
def test_done_cancelled_or_error_fails_the_turn(kind: str, reason: str) -> None:
    """A leg ending with reason cancelled or error fails the turn with actor_error."""
    machine = started(CONCURRENT)
    actions = machine.on_event(done(kind, 1, reason))
    other = "chat" if kind == "tool" else "tool"
    assert actions[0] == CancelLegs((other,))  # type: ignore[arg-type]
    (error_frame,) = [f for f in sent(actions) if f["type"] == "error"]
    assert error_frame["error_code"] == "actor_error"
    assert kind in error_frame["message"] and reason in error_frame["message"]
    assert done_frames(actions)[0]["error_code"] == "actor_error"
    assert machine.outcome == "failed"


def test_tool_done_without_decision_fails() -> None:
    """A tool leg that ends normally without a toolcall fails the turn."""
    machine = started(SEQUENTIAL)
    actions = machine.on_event(done("tool", 1, "stop"))
    assert frame_types(actions) == ["error", "done"]
    assert machine.error_code == "actor_error"


def test_fail_is_idempotent() -> None:
    """fail() on a finished turn does nothing, so a turn never sends two done frames."""
    machine = started(CONCURRENT)
    first = machine.fail("turn_timeout", "too slow")
    assert first[0] == CancelLegs(("tool", "chat"))
    assert len(done_frames(first)) == 1
    assert machine.fail("actor_lost", "gone") == []
    assert machine.error_code == "turn_timeout"


def test_fail_after_completion_does_nothing() -> None:
    """A timeout racing a completed turn does not turn it into a failure."""
    machine = started(CHAT_ONLY)
    feed(machine, [token(1, "a"), done("chat", 2)])
    assert machine.fail("turn_timeout", "late") == []
    assert machine.outcome == "completed"
    assert machine.error_code is None


def test_cancel_is_idempotent() -> None:
    """cancel() cancels the running legs once; a second call does nothing."""
    machine = started(CONCURRENT)
    assert machine.cancel() == [CancelLegs(("tool", "chat"))]
    assert machine.outcome == "cancelled"
    assert machine.cancel() == []
    assert machine.fail("x", "y") == []
    assert machine.outcome == "cancelled"


def test_cancel_sends_no_frames() -> None:
    """cancel() leaves the cancelled done frame to the connection and drops later events."""
    machine = started(SEQUENTIAL)
    machine.on_event(toolcall(1))
    actions = machine.cancel()
    assert sent(actions) == []
    assert feed(machine, [token(1, "a"), done("chat", 2), done("tool", 2)]) == []


def test_cancel_with_nothing_running() -> None:
    """cancel() before begin() cancels nothing but still ends the turn."""
    machine = TurnMachine(CONCURRENT)
    assert machine.cancel() == []
    assert machine.outcome == "cancelled"


def test_cancel_after_completion_does_nothing() -> None:
    """A barge-in after the done frame leaves the turn completed."""
    machine = started(CHAT_ONLY)
    feed(machine, [done("chat", 1)])
    assert machine.cancel() == []
    assert machine.outcome == "completed"


# --- usage, raw and final -------------------------------------------------------------


def test_usage_without_tool_leg_has_no_tool_keys() -> None:
    """Chat-only usage holds only the chat counters."""
    machine = started(CHAT_ONLY)
    (frame,) = done_frames(machine.on_event(done("chat", 1, "stop", 3, 4, 5)))
    assert frame["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "cached_tokens": 5}


def test_usage_includes_tool_counters_when_tool_done_first() -> None:
    """Concurrent: a tool Done before the chat Done adds tool_prompt/completion_tokens."""
    machine = started(CONCURRENT)
    feed(machine, [toolcall(1), done("tool", 2, "stop", 11, 2, 9)])
    (frame,) = done_frames(machine.on_event(done("chat", 1, "stop", 20, 5, 0)))
    assert frame["usage"] == {
        "prompt_tokens": 20,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "tool_prompt_tokens": 11,
        "tool_completion_tokens": 2,
    }


@pytest.mark.parametrize(
    ("raw", "calls", "expected"),
    [
        ("[]", (), []),
        (" [ ] ", (), []),
        ('[{"name": "play", "arguments": {}}]', (), [{"name": "play", "arguments": {}}]),
        ("no tool", (), "no tool"),
        ("", (), ""),
        ('{"name": "play"}', (), '{"name": "play"}'),
        ("null", (), "null"),
        ("42", (), "42"),
        ("[broken", (), "[broken"),
        (
            "play(q='mix')",
            (ToolCallSpec("play", {"q": "mix"}), ToolCallSpec("stop")),
            [{"name": "play", "arguments": {"q": "mix"}}, {"name": "stop", "arguments": {}}],
        ),
    ],
)
def test_raw_field(raw: str, calls: tuple[ToolCallSpec, ...], expected: object) -> None:
    """raw is the parsed calls list when there are calls, a JSON list when it parses, else text."""
    machine = started(CONCURRENT)
    (frame,) = sent(machine.on_event(toolcall(1, "yes" if calls else "no", raw, calls=calls)))
    assert frame["raw"] == expected


@pytest.mark.parametrize(
    ("tokens", "normalized"),
    [
        (["Hello", " world"], "Hello world"),
        (["  Hello\n", "\n world \t", "!  "], "Hello world !"),
        (["a", "", "b"], "ab"),
        (["   "], ""),
        ([], ""),
        (["line one\n\n", "line two"], "line one line two"),
    ],
)
def test_final_collapses_whitespace(tokens: list[str], normalized: str) -> None:
    """The final frame's normalized_text is the reply with runs of whitespace collapsed."""
    machine = started(CHAT_ONLY)
    feed(machine, [token(i, text) for i, text in enumerate(tokens, 1)])
    assert machine.text == "".join(tokens)
    actions = machine.on_event(done("chat", len(tokens) + 1))
    assert sent(actions)[0] == {"type": "final", "normalized_text": normalized}


# --- orderings ------------------------------------------------------------------------


def _interleave(a: list[OutboundEvent], b: list[OutboundEvent], picks: list[bool]):
    a, b, out = list(a), list(b), []
    for pick in picks:
        source = a if (pick and a) or not b else b
        if source:
            out.append(source.pop(0))
    return out + a + b


@given(
    texts=st.lists(st.text(max_size=4), max_size=6),
    picks=st.lists(st.booleans(), max_size=20),
    replays=st.lists(st.integers(min_value=0, max_value=20), max_size=4),
    concurrent=st.booleans(),
)
def test_any_ordering_sends_one_done(
    texts: list[str], picks: list[bool], replays: list[int], concurrent: bool
) -> None:
    """In any order, with replays, a two-leg turn sends the toolcall first, all text, one done."""
    plan = CONCURRENT if concurrent else SEQUENTIAL
    chat: list[OutboundEvent] = [token(i, t) for i, t in enumerate(texts, 1)]
    chat.append(done("chat", len(texts) + 1))
    tool: list[OutboundEvent] = [toolcall(1), done("tool", 2)]
    if concurrent:
        events = _interleave(tool, chat, picks)
    else:  # the chat leg only starts after the decision
        events = [tool[0], *_interleave(tool[1:], chat, picks)]
    for index in replays:
        if events:
            position = index % len(events)
            events.insert(position + 1, events[position])
    machine = TurnMachine(plan)
    actions = machine.begin() + feed(machine, events)
    actions += machine.fail("late", "late") + machine.cancel()
    kinds = frame_types(actions)
    assert machine.outcome == "completed"
    assert kinds.count("done") == 1
    assert kinds.count("toolcall") == 1
    assert kinds[-2:] == ["final", "done"]
    streamed = [a.text for a in actions if isinstance(a, SendToken)]
    if streamed:
        assert kinds.index("toolcall") < kinds.index("SendToken")
    assert "".join(streamed) == "".join(texts)


# --- Turn: leg owners, held events, deadlines -------------------------------------------


def new_turn(plan: TurnPlan = CHAT_ONLY, now: float = 0.0) -> Turn:
    turn = Turn(plan, now=now, event_timeout_s=30.0, turn_timeout_s=120.0)
    turn.begin()
    return turn


def test_events_before_acceptance_are_held_then_replayed_from_the_owner() -> None:
    """Events that beat their leg's acceptance wait; on acceptance the owner's are played
    in order and everyone else's are dropped."""
    turn = new_turn()
    assert turn.on_event("chat-1", token(1, "a"), 0.1) == []
    assert turn.on_event("chat-9", token(2, "FORGED"), 0.1) == []
    assert turn.on_event("chat-1", token(2, "b"), 0.1) == []
    assert turn.accepted("chat", "chat-1", "i1", 0.2) == [SendToken("a"), SendToken("b")]
    assert turn.owner("chat") == "chat-1"
    assert turn.machine.text == "ab"


def test_events_from_another_actor_are_dropped() -> None:
    """Once a leg is accepted, only its actor's events reach the machine."""
    turn = new_turn()
    turn.accepted("chat", "chat-1", "i1", 0.0)
    assert turn.on_event("chat-2", token(1, "x"), 0.1) == []
    assert turn.on_event("chat-1", token(1, "y"), 0.1) == [SendToken("y")]
    assert turn.on_event("chat-2", done("chat", 2), 0.1) == []
    assert turn.machine.outcome == "running"


def test_events_for_a_leg_not_started_are_not_held() -> None:
    """In sequential mode the chat leg starts only after the decision: earlier chat
    events are dropped, not kept for later."""
    turn = new_turn(SEQUENTIAL)
    assert turn.on_event("chat-1", token(1, "early"), 0.0) == []
    turn.accepted("tool", "tool-0", "i", 0.0)
    assert turn.on_event("tool-0", toolcall(1), 0.0)[-1] == StartLeg("chat")
    assert turn.accepted("chat", "chat-1", "i", 0.0) == []


def test_held_events_are_bounded() -> None:
    """At most HELD_PER_LEG events wait per leg; the one dropped leaves a gap that fails it."""
    from edge.turn import HELD_PER_LEG

    turn = new_turn()
    for seq in range(1, HELD_PER_LEG + 3):
        turn.on_event("chat-1", token(seq, "x"), 0.0)
    actions = turn.accepted("chat", "chat-1", "i", 0.0)
    assert sum(isinstance(a, SendToken) for a in actions) == HELD_PER_LEG
    assert turn.on_event("chat-1", token(HELD_PER_LEG + 3, "y"), 0.0)[0] == CancelLegs(("chat",))
    assert turn.machine.error_code == "actor_error"


def test_a_second_acceptance_changes_nothing() -> None:
    """A leg has one owner: a later Accepted (a duplicate reply) cannot take it over."""
    turn = new_turn()
    turn.accepted("chat", "chat-1", "i", 0.0)
    assert turn.accepted("chat", "chat-2", "i", 0.0) == []
    assert turn.on_event("chat-2", token(1, "x"), 0.0) == []


def test_restart_of_the_owner_fails_the_turn_with_actor_lost() -> None:
    """A new instance of a leg's actor means the leg is gone: actor_lost at once; other
    actors' restarts and the same instance change nothing."""
    turn = new_turn(CONCURRENT)
    turn.accepted("tool", "tool-0", "t1", 0.0)
    turn.accepted("chat", "chat-1", "c1", 0.0)
    assert turn.restarted("chat-2", "zz") == []
    assert turn.restarted("chat-1", "c1") == []
    actions = turn.restarted("chat-1", "c2")
    assert isinstance(actions[0], CancelLegs)
    assert sent(actions)[0]["error_code"] == "actor_lost"
    assert "restarted" in sent(actions)[0]["message"]


def test_restart_with_unknown_instances_changes_nothing() -> None:
    """Actors that report no instance (older ones) are never taken for restarted."""
    turn = new_turn()
    turn.accepted("chat", "chat-1", "", 0.0)
    assert turn.restarted("chat-1", "new") == []


def test_expire_actor_lost_event_and_turn_timeouts() -> None:
    """A silent owner is actor_lost; no event for event_timeout_s, or a turn past
    turn_timeout_s, is turn_timeout; events keep the turn fresh."""
    turn = new_turn()
    turn.accepted("chat", "chat-1", "i", 0.0)
    assert turn.expire(10.0, lambda actor: True) == []
    assert sent(turn.expire(10.0, lambda actor: actor != "chat-1"))[0]["error_code"] == "actor_lost"

    idle = new_turn()
    idle.accepted("chat", "chat-1", "i", 0.0)
    idle.on_event("chat-1", token(1, "a"), 20.0)
    assert idle.expire(49.0, lambda actor: True) == []
    error = sent(idle.expire(50.5, lambda actor: True))[0]
    assert error["error_code"] == "turn_timeout" and "30 s" in error["message"]

    slow = new_turn()
    slow.accepted("chat", "chat-1", "i", 0.0)
    for seq in range(1, 10):
        slow.on_event("chat-1", token(seq, "a"), seq * 13.0)
    error = sent(slow.expire(121.0, lambda actor: True))[0]
    assert error["error_code"] == "turn_timeout" and "120 s" in error["message"]
    assert slow.expire(122.0, lambda actor: True) == []  # failed once, then finished


def test_expire_before_acceptance_does_not_call_it_lost() -> None:
    """A leg with no owner yet has no actor to lose; only the deadlines apply."""
    turn = new_turn()
    assert turn.expire(1.0, lambda actor: False) == []
