"""Turns, anchors and the replay script read from a recording; no I/O."""

from __future__ import annotations

import json

from replay.timeline import Anchor, build_timeline, recorded_signature, render_list, render_show
from tests.unit.replay import recorded


def test_turns_and_outcomes() -> None:
    """Four turns: a plain one, a cancel, a barged-in one and its successor."""
    timeline = build_timeline(recorded.session())
    assert [t.turn_id for t in timeline.turns] == ["t1", "t2", "t3", "t4"]
    assert [t.ended_by for t in timeline.turns] == ["done", "cancel", "barge_in", "done"]
    assert [t.toolcall_status for t in timeline.turns] == ["no", "yes", "no", "no"]
    assert timeline.turns[0].normalized_text == "Hello world."
    assert timeline.rejections == ["invalid_json"]


def test_tokens_after_the_end_never_count() -> None:
    """A straggler token after turn 2 ended reached no client and is not its text."""
    turn = build_timeline(recorded.session()).turns[1]
    assert turn.text == "Once upon "


def test_a_completed_turn_keeps_tokens_stored_after_its_end() -> None:
    """The stream may date a completed turn's last token after the edge's end record:
    it reached the client before the done, so it is part of the text."""
    items = [*recorded.script(), *recorded.tokens(31.5, "t1", [" Bye."])]
    turn = build_timeline(recorded.session_of(items)).turns[0]
    assert turn.normalized_text == "Hello world. Bye."


def test_interrupts_are_anchored_to_the_turn() -> None:
    """The cancel and the barge-in carry the reply length and decision when they came."""
    timeline = build_timeline(recorded.session())
    cancel = next(s for s in timeline.steps if s.message_type == "cancel")
    assert cancel.anchor == Anchor(turn=2, chars=len("Once upon "), toolcall=True)
    barge = [s for s in timeline.steps if s.message_type == "start"][-1]
    assert barge.anchor == Anchor(turn=3, chars=len("One two "), toolcall=True)
    assert barge.starts_turn == 4
    assert timeline.turns[2].interrupt == barge.anchor


def test_idle_frames_keep_their_gap() -> None:
    """A start after a finished turn waits the recorded gap from the turn's end."""
    timeline = build_timeline(recorded.session())
    second = [s for s in timeline.steps if s.message_type == "start"][1]
    assert second.anchor is None and second.starts_turn == 2
    assert abs(second.gap_s - (240 - 31) / 1000) < 1e-6


def test_latencies_from_the_start_frame() -> None:
    """Then-latencies run from the start's arrival to the decision, first token, end."""
    turn = build_timeline(recorded.session()).turns[0]
    latencies = turn.latencies_ms()
    assert latencies["toolcall_ms"] == 3 + 5 - 1
    assert latencies["first_token_ms"] == 20 - 1
    assert latencies["total_ms"] == 31 - 1


def test_signatures() -> None:
    """Done turns end in final and done, a cancel in done:cancelled, a barge-in silently."""
    turns = build_timeline(recorded.session()).turns
    assert recorded_signature(turns[0]) == ("ack", "toolcall:no", "token", "final", "done")
    assert recorded_signature(turns[1]) == ("ack", "toolcall:yes", "token", "done:cancelled")
    assert recorded_signature(turns[2]) == ("ack", "toolcall:no", "token")


def test_disconnect_becomes_a_close_step() -> None:
    """A turn cancelled with no cancel or start from the client ends in a close step."""
    items = [item for item in recorded.script() if item[0] <= 31]
    items += [
        recorded.frame(240, recorded.start("look")),
        recorded.turn(241, "t2"),
        *recorded.legs(242, "t2", "look", "yes"),
        *recorded.tokens(260, "t2", ["Once "]),
        recorded.end(265, "t2", "cancelled"),
    ]
    timeline = build_timeline(recorded.Session.of(recorded.SID, recorded.events(items)))
    assert timeline.turns[1].ended_by == "disconnect"
    assert timeline.steps[-1].close and timeline.steps[-1].anchor == Anchor(2, 5, True)


def test_rendering() -> None:
    """list shows turns and outcomes; show the timeline with the tool decision and text."""
    timeline = build_timeline(recorded.session())
    listing = render_list([timeline])
    assert recorded.SID in listing and "done cancelled cancelled done" in listing
    shown = render_show(timeline)
    assert "seed 42" in shown and "tool decision yes" in shown
    assert json.dumps("Hello world.") in shown
    assert "cancelled after" in shown and "barge_in" in shown
