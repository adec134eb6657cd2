"""Then vs now, and what --strict fails on; no I/O."""

from __future__ import annotations

from typing import Any

from clients.metrics import TimedFrame
from replay.compare import Thresholds, compare, render_report
from replay.driver import ObservedTurn, SessionRun
from replay.timeline import build_timeline
from tests.unit.replay import recorded

LOOSE = Thresholds(max_slowdown=100.0, slack_ms=10_000.0)


def observed(
    index: int,
    status: str,
    words: list[str],
    ended_by: str,
    *,
    delay_ms: float = 1.0,
    cached: int = 0,
) -> ObservedTurn:
    """A replayed turn whose frames come ``delay_ms`` apart."""
    turn = ObservedTurn(index, sent_at=0.0)
    at = 0.0

    def add(data: dict[str, Any]) -> None:
        nonlocal at
        at += delay_ms / 1000
        turn.frames.append(TimedFrame(at=at, data=data))

    add({"type": "ack", "for": "start"})
    add({"type": "toolcall", "status": status})
    turn.toolcall_status = status
    for word in words:
        add({"type": "token", "text": word})
        turn.streamed += word
    if ended_by == "done":
        turn.final = " ".join(turn.streamed.split())
        add({"type": "final", "normalized_text": turn.final})
        turn.usage = {"cached_tokens": cached}
        add({"type": "done", "usage": turn.usage})
    elif ended_by == "cancel":
        add({"type": "done", "cancelled": True})
    turn.ended_by = ended_by
    return turn


def faithful(**changes: Any) -> SessionRun:
    """A replay that saw what the recording holds (``changes`` per turn index)."""
    turns = [
        observed(1, "no", ["Hello ", "world."], "done"),
        observed(2, "yes", ["Once ", "upon ", "a ", "time"], "cancel"),
        observed(3, "no", ["One ", "two ", "three "], "barge_in"),
        observed(4, "no", ["Sure."], "done"),
    ]
    for key, turn in changes.items():
        turns[int(key[1:]) - 1] = turn
    return SessionRun(recorded.SID, "replay-x", turns=turns, rejections=["invalid_json"])


def test_faithful_replay_has_no_failures() -> None:
    """Same decisions, text (up to each interrupt) and frames: nothing for --strict."""
    report = compare(build_timeline(recorded.session()), faithful(), LOOSE)
    assert report.failures == []
    assert [t.divergence for t in report.turns] == [None] * 4
    text = render_report(report)
    assert "identical" in text and "DIFFERS" not in text


def test_text_divergence_names_the_turn_and_character() -> None:
    """A shorter reply diverges where it ends, and the failure names turn and character."""
    run = faithful(t1=observed(1, "no", ["Hello ", "wor"], "done"))
    report = compare(build_timeline(recorded.session()), run, LOOSE)
    assert report.turns[0].divergence == len("Hello wor")
    assert report.failures == [f"turn 1: text diverges at character {len('Hello wor')}"]
    assert "DIFFERS at char 9" in render_report(report)


def test_decision_and_frames_mismatch() -> None:
    """Another tool decision fails exactly, and shows in the frames too."""
    run = faithful(t4=observed(4, "yes", ["Sure."], "done"))
    failures = compare(build_timeline(recorded.session()), run, LOOSE).failures
    assert "turn 4: tool decision no then, yes now" in failures
    assert any(f.startswith("turn 4: frames") for f in failures)


def test_latency_regression_over_the_threshold() -> None:
    """A turn slower than then x (1 + slowdown) + slack fails; within it passes."""
    slow = faithful(t1=observed(1, "no", ["Hello ", "world."], "done", delay_ms=100))
    timeline = build_timeline(recorded.session())
    failures = compare(timeline, slow, Thresholds(max_slowdown=0.5, slack_ms=5)).failures
    assert any(f.startswith("turn 1: first token") for f in failures)
    assert compare(timeline, slow, LOOSE).failures == []


def test_cache_state_difference_is_not_comparable() -> None:
    """Text that diverges from another cache state is not comparable, and strict says
    why; the same text from another cache state is simply identical."""
    run = faithful(t1=observed(1, "no", ["Hello ", "wor"], "done", cached=64))
    report = compare(build_timeline(recorded.session()), run, LOOSE)
    assert report.failures == [
        "turn 1: not comparable: text diverges at character 9 but the cache state differs "
        "(0 cached tokens then, 64 now); replay with --warmup, or from the same cache state"
    ]
    same = faithful(t1=observed(1, "no", ["Hello ", "world."], "done", cached=64))
    report = compare(build_timeline(recorded.session()), same, LOOSE)
    assert report.failures == [] and report.turns[0].divergence is None


def test_missing_turns_and_rejections() -> None:
    """A turn the replay never had, and other rejections, are failures of their own."""
    run = faithful()
    run.turns = run.turns[:3]
    run.rejections = []
    failures = compare(build_timeline(recorded.session()), run, LOOSE).failures
    assert "turn 4: no such turn in the replay" in failures
    assert any("rejected frames then ['invalid_json'], now none" in f for f in failures)


def test_thresholds() -> None:
    """The regression rule is now > then x (1 + slowdown) + slack."""
    rule = Thresholds(max_slowdown=0.5, slack_ms=10)
    assert not rule.regressed(100, 160)
    assert rule.regressed(100, 161)
