"""Latency metrics of a turn, computed from its timeline of received frames.

Pure functions: the I/O layer (``clients.turn``) stamps each frame with
``time.monotonic()`` when it arrives and hands the timeline here. The metric names
and their meaning are the original ``test/warmup.py`` and ``test/bench.py``'s, so
numbers from yap-bus and from the single-process server compare directly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bus.stats import percentile

__all__ = [
    "FIRST_WORDS",
    "Summary",
    "TimedFrame",
    "TurnMetrics",
    "has_complete_sentence",
    "has_words",
    "summarize",
    "turn_metrics",
]

# A sentence end is . ! or ?, optionally closed by quotes or brackets, then
# whitespace or the end of the text so far (the seed's heuristic, kept as is so
# that first-sentence numbers stay comparable).
_SENTENCE_END = re.compile(r"[.!?][\"”')\]]*(?:\s|$)")
FIRST_WORDS = 3


@dataclass(frozen=True, slots=True)
class TimedFrame:
    """One decoded server frame and the monotonic time (seconds) it was received."""

    at: float
    data: Mapping[str, Any]

    @property
    def type(self) -> str:
        value = self.data.get("type")
        return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class TurnMetrics:
    """Milliseconds from sending ``start``; ``None`` where the event never happened.

    ``ttfb_ms`` and ``ttfb_chat_ms`` are both the first ``token`` frame: the seed
    printed both names for the same moment and dashboards use either.
    """

    ttfb_ms: float | None
    ttfb_chat_ms: float | None
    ttfb_toolcall_ms: float | None
    total_ms: float | None
    stream_ms: float | None
    time_to_first_complete_sentence_ms: float | None
    time_to_first_3_words_ms: float | None
    chunks: int
    chars: int

    def as_dict(self, digits: int = 2) -> dict[str, float | int | None]:
        """The metrics as JSON-ready values, times rounded to ``digits`` decimals."""
        return {
            key: round(value, digits) if isinstance(value, float) else value
            for key, value in asdict(self).items()
        }


def has_complete_sentence(text: str) -> bool:
    return _SENTENCE_END.search(text) is not None


def has_words(text: str, count: int) -> bool:
    """Whether ``text`` holds ``count`` whitespace-separated words (punctuation counts)."""
    return len(text.split()) >= count


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else (end - start) * 1000.0


def turn_metrics(sent_at: float, frames: Iterable[TimedFrame]) -> TurnMetrics:
    """Compute one turn's metrics from the frames received after sending at ``sent_at``.

    Frames after the first ``done`` belong to no turn and are ignored. The text is
    the concatenated tokens unless a ``final`` frame carries a non-empty
    ``normalized_text``, which replaces it (as in the seed).
    """
    toolcall_at: float | None = None
    first_token_at: float | None = None
    sentence_at: float | None = None
    words_at: float | None = None
    done_at: float | None = None
    streamed = ""
    final_text: str | None = None
    chunks = 0
    for frame in frames:
        kind = frame.type
        if kind == "toolcall" and toolcall_at is None:
            toolcall_at = frame.at
        elif kind == "token":
            text = frame.data.get("text")
            streamed += text if isinstance(text, str) else ""
            chunks += 1
            if first_token_at is None:
                first_token_at = frame.at
            if words_at is None and has_words(streamed, FIRST_WORDS):
                words_at = frame.at
            if sentence_at is None and has_complete_sentence(streamed):
                sentence_at = frame.at
        elif kind == "final":
            normalized = frame.data.get("normalized_text")
            if isinstance(normalized, str) and normalized:
                final_text = normalized
        elif kind == "done":
            done_at = frame.at
            break
    stream_ms = None
    if first_token_at is not None and done_at is not None:
        stream_ms = (done_at - first_token_at) * 1000.0
    ttfb = _ms(sent_at, first_token_at)
    return TurnMetrics(
        ttfb_ms=ttfb,
        ttfb_chat_ms=ttfb,
        ttfb_toolcall_ms=_ms(sent_at, toolcall_at),
        total_ms=_ms(sent_at, done_at),
        stream_ms=stream_ms,
        time_to_first_complete_sentence_ms=_ms(sent_at, sentence_at),
        time_to_first_3_words_ms=_ms(sent_at, words_at),
        chunks=chunks,
        chars=len(final_text if final_text is not None else streamed),
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """The distribution of one metric over many turns."""

    count: int
    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float

    def as_dict(self, digits: int = 2) -> dict[str, float | int]:
        return {
            key: round(value, digits) if isinstance(value, float) else value
            for key, value in asdict(self).items()
        }


def summarize(values: Sequence[float]) -> Summary | None:
    """p50/p95/p99, mean and range of ``values``; ``None`` when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return Summary(
        count=len(ordered),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        p99=percentile(ordered, 99),
        mean=math.fsum(ordered) / len(ordered),
        min=ordered[0],
        max=ordered[-1],
    )
