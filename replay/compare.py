"""Then vs now: a recorded session against its replay, turn by turn.

Per turn: the tool decision (exact), the text (identical or the first divergence),
the frame sequence (token runs as one), the chat prompt's cached tokens, and the
toolcall, first-token and total latency.

**Cache state.** Greedy decoding is not reproducible between a prompt computed
cold and one computed from a cached prefix: near-tie logits flip
(``docs/benchmarks-gpu.md``). So text is compared only between equal cache states:
each turn carries the chat prompt's ``cached_tokens`` then and now, and a text
that diverges where both are known and differ is *not comparable*: ``--strict``
fails on that, saying so, not on the divergence (identical text is identical).
The way to get equal states is ``replay --warmup``: one unscored pass first, so
that the scored pass runs from the cache state a recording made on a warm system
has. The CPU engine's cache fills only through warm requests: the client's, and
the chat actor's own next-turn warm, which the session's next start cancels if it
still runs, so whether it got done is timing; a gate that must compare every turn
runs both sides with ``chat.warm_next_turn = false``.

**Latency.** Then is measured at the bus (the start's arrival at the edge to the
event's arrival at nats-server), now at the client (start sent to frame
received), so now also holds the edge-to-client hop, sub-millisecond on one host.
A metric regresses when now > then x (1 + max_slowdown) + slack_ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from replay.driver import ObservedTurn, SessionRun
from replay.timeline import RecordedTurn, Timeline, outcome_word, recorded_signature, signature

__all__ = ["SessionReport", "Thresholds", "TurnReport", "compare", "render_report"]

_CONTEXT: Final = 24
_METRICS: Final = (
    ("toolcall", "toolcall_ms", "ttfb_toolcall_ms"),
    ("first token", "first_token_ms", "ttfb_chat_ms"),
    ("total", "total_ms", "total_ms"),
)


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_slowdown: float = 0.5
    slack_ms: float = 50.0

    def regressed(self, then_ms: float, now_ms: float) -> bool:
        return now_ms > then_ms * (1.0 + self.max_slowdown) + self.slack_ms


@dataclass(slots=True)
class TurnReport:
    index: int
    then: RecordedTurn
    now: ObservedTurn | None
    decision: tuple[str | None, str | None]
    text_then: str = ""
    text_now: str = ""
    divergence: int | None = None  # first differing character, None when identical
    text_note: str = ""  # why text was not compared, if it was not
    frames: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    cached: tuple[int | None, int | None] = (None, None)
    latencies: list[tuple[str, float | None, float | None, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SessionReport:
    timeline: Timeline
    run: SessionRun
    turns: list[TurnReport]
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def compare(timeline: Timeline, run: SessionRun, thresholds: Thresholds) -> SessionReport:
    """Compare the recording with its replay; ``failures`` is what ``--strict`` fails on."""
    failures: list[str] = [f"session {timeline.session.session_id}: {p}" for p in run.problems]
    reports = []
    for then in timeline.turns:
        now = run.turns[then.index - 1] if then.index <= len(run.turns) else None
        report = _turn(then, now, thresholds, redacted=timeline.redacted)
        reports.append(report)
        failures += [f"turn {then.index}: {f}" for f in report.failures]
    if len(run.turns) > len(timeline.turns):
        failures.append(
            f"session {timeline.session.session_id}: {len(run.turns)} turns now, "
            f"{len(timeline.turns)} then"
        )
    if run.rejections != timeline.rejections:
        failures.append(
            f"session {timeline.session.session_id}: rejected frames then "
            f"{timeline.rejections or 'none'}, now {run.rejections or 'none'}"
        )
    return SessionReport(timeline, run, reports, failures)


def _turn(
    then: RecordedTurn, now: ObservedTurn | None, thresholds: Thresholds, *, redacted: bool
) -> TurnReport:
    report = TurnReport(then.index, then, now, (then.toolcall_status, None))
    then_frames = recorded_signature(then)
    if now is None:
        report.frames = (then_frames, ())
        report.failures.append("no such turn in the replay")
        return report
    report.decision = (then.toolcall_status, now.toolcall_status)
    anchor = then.interrupt
    if then.toolcall_status is not None and now.toolcall_status is not None:
        if then.toolcall_status != now.toolcall_status:
            report.failures.append(
                f"tool decision {then.toolcall_status} then, {now.toolcall_status} now"
            )
    elif then.toolcall_status is not None and (anchor is None or anchor.toolcall):
        report.failures.append(f"tool decision {then.toolcall_status} then, none now")
    now_frames = signature(
        toolcall=now.toolcall_status,
        text=bool(now.streamed),
        ended_by=now.ended_by,
        error_code=now.error_code,
        anchor=anchor,
    )
    report.frames = (then_frames, now_frames)
    if then_frames != now_frames:
        report.failures.append(f"frames {' '.join(then_frames)} then, {' '.join(now_frames)} now")
    report.cached = (then.cached_tokens, now.cached_tokens)
    _text(report, then, now, redacted=redacted)
    metrics = now.metrics()
    for label, then_key, now_field in _METRICS:
        then_ms = then.latencies_ms()[then_key]
        now_ms = getattr(metrics, now_field)
        if then_key == "total_ms" and now.ended_by not in ("done", "error"):
            now_ms = None
        regressed = (
            then_ms is not None and now_ms is not None and thresholds.regressed(then_ms, now_ms)
        )
        report.latencies.append((label, then_ms, now_ms, regressed))
        if regressed:
            report.failures.append(f"{label} {now_ms:.1f} ms now, {then_ms:.1f} ms then")
    return report


def _text(report: TurnReport, then: RecordedTurn, now: ObservedTurn, *, redacted: bool) -> None:
    anchor = then.interrupt
    if then.ended_by == "error":
        report.text_note = "not compared (the turn failed)"
        return
    if anchor is not None:
        # Interrupted: only what had come before the interrupt means anything.
        report.text_then, report.text_now = then.text[: anchor.chars], now.streamed[: anchor.chars]
    else:
        report.text_then, report.text_now = then.normalized_text, now.text
    if redacted:
        report.text_note = "not compared (the recording is redacted: replay sent blanks)"
        return
    report.divergence = _divergence(report.text_then, report.text_now)
    if report.divergence is None:
        return  # identical, whatever the cache held: nothing to explain
    cached_then, cached_now = report.cached
    if cached_then is not None and cached_now is not None and cached_then != cached_now:
        # A near-tie may have flipped: this divergence says nothing about the change.
        report.text_note = (
            f"not comparable: text diverges at character {report.divergence} but the cache "
            f"state differs ({cached_then} cached tokens then, {cached_now} now); replay "
            "with --warmup, or from the same cache state"
        )
        report.failures.append(report.text_note)
        return
    report.failures.append(f"text diverges at character {report.divergence}")


def _divergence(a: str, b: str) -> int | None:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


# --- rendering ----------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _snippet(text: str, at: int) -> str:
    start = max(at - _CONTEXT // 2, 0)
    piece = text[start : start + _CONTEXT]
    return f"{'…' if start else ''}{piece!r}"


def render_report(report: SessionReport) -> str:
    """Then and now side by side, one block per turn."""
    timeline, run = report.timeline, report.run
    lines = [
        f"session {timeline.session.session_id} replayed as {run.session_id}: "
        f"{len(timeline.turns)} turn(s) then, {len(run.turns)} now"
    ]
    row = "  {:<15} {:<34} {:<34} {}"
    for turn in report.turns:
        then, now = turn.then, turn.now
        how = f", {then.ended_by}" if then.ended_by not in (None, "done") else ""
        lines.append(f"turn {turn.index} ({outcome_word(then)}{how})")
        lines.append(row.format("", "then", "now", ""))
        decision_ok = turn.decision[0] == turn.decision[1] or turn.decision[0] is None
        lines.append(
            row.format(
                "tool decision",
                str(turn.decision[0] or "-"),
                str(turn.decision[1] or "-"),
                "ok" if decision_ok else "DIFFERS",
            )
        )
        if turn.text_note and turn.divergence is None:
            text_now, verdict = turn.text_note, ""
        elif turn.divergence is None:
            text_now, verdict = "identical", "ok"
        else:
            text_now = _snippet(turn.text_now, turn.divergence)
            verdict = f"DIFFERS at char {turn.divergence}"
            if turn.text_note:
                verdict += ", not comparable (cache state differs)"
        text_then = f"{len(turn.text_then)} chars"
        if turn.divergence is not None:
            text_then = _snippet(turn.text_then, turn.divergence)
        lines.append(row.format("text", text_then, text_now, verdict))
        frames_ok = turn.frames[0] == turn.frames[1]
        lines.append(
            row.format(
                "frames",
                " ".join(turn.frames[0]),
                "same" if frames_ok else " ".join(turn.frames[1]) or "-",
                "ok" if frames_ok else "DIFFERS",
            )
        )
        lines.append(
            row.format(
                "cached tokens",
                str(turn.cached[0] if turn.cached[0] is not None else "-"),
                str(turn.cached[1] if turn.cached[1] is not None else "-"),
                "",
            )
        )
        for label, then_ms, now_ms, regressed in turn.latencies:
            lines.append(
                row.format(label, _ms(then_ms), _ms(now_ms), "SLOWER" if regressed else "")
            )
        if now is None:
            lines.append("  (not replayed)")
    for problem in run.problems:
        lines.append(f"problem: {problem}")
    if run.rejections or timeline.rejections:
        lines.append(
            f"rejected frames  then {' '.join(timeline.rejections) or '-'}  "
            f"now {' '.join(run.rejections) or '-'}"
        )
    return "\n".join(line.rstrip() for line in lines)


def summary_line(reports: Sequence[SessionReport]) -> str:
    turns = sum(len(r.turns) for r in reports)
    failed = sum(1 for r in reports for t in r.turns if t.failures)
    return f"{len(reports)} session(s), {turns} turn(s): {turns - failed} matched, {failed} differ"
