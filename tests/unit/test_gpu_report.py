"""The multi-GPU report: ratios to layout (a), replicas' hit rates, problems; no I/O."""

from __future__ import annotations

from typing import Any

from bench.gpu_report import multigpu_report


def _row(layout: str, turn: int, turns_per_s: float, ttft: float, **extra: Any) -> dict[str, Any]:
    return {
        "layout": layout,
        "mode": "concurrent",
        "chat_model": "random:llama-3.1-8b",
        "sessions": 16,
        "turn": turn,
        "ok": 16,
        "failed": [],
        "tool": {"p50": 20.0, "p95": 30.0, "n": 16},
        "ttft": {"p50": ttft, "p95": ttft * 1.5, "n": 16},
        "per_token": {"p50": 7.25, "p95": 8.0, "n": 16},
        "turns_per_s": turns_per_s,
        "replicas": {"chat-0": {"sessions": 16, "hit_rate": 0.9}},
        "moved": 0,
        "unmatched": 0,
        **extra,
    }


def test_layouts_are_reported_against_a_on_the_same_row() -> None:
    """(c) at twice (a)'s turns/s and half its TTFT reads 2.00 and 0.50; the summary
    takes turns over the bursts' time; two replicas show their hit rates and sessions."""
    two = {"chat-0": {"sessions": 9, "hit_rate": 0.91}, "chat-1": {"sessions": 7, "hit_rate": 0.88}}
    run = {
        "device": "NVIDIA H200",
        "gpus": 2,
        "layouts": [{"name": "a", "title": "t", "placement": "p"}],
        "rows": [
            _row("a", 1, 4.0, 400.0),
            _row("a", 2, 8.0, 100.0),
            _row("c", 1, 8.0, 200.0, replicas=two),
            _row("c", 2, 16.0, 50.0, replicas=two),
        ],
    }
    text = multigpu_report([run])
    assert "| c | concurrent | 16 | 1 | 8.00 | 20.0 / 30.0 | 200.0 / 300.0 | 7.25 " in text
    assert "chat-0 0.91 (9), chat-1 0.88 (7) | 0 | 2.00 | 0.50 |" in text
    # 32 turns in 16/4 + 16/8 = 6 s for (a), in 3 s for (c).
    assert "| a | concurrent | 16 | 5.33 | 1.00 |" in text
    assert "| c | concurrent | 16 | 10.67 | 2.00 |" in text
    assert "Rows with failed turns" not in text


def test_rows_without_a_base_or_with_problems_say_so() -> None:
    """Without an (a) row the ratios are '-'; a moved session or an unmatched leg is
    listed under the table."""
    text = multigpu_report([{"rows": [_row("b", 2, 5.0, 90.0, moved=2, unmatched=1)]}])
    assert "| b | concurrent | 16 | 5.00 | - |" in text
    assert "| 2 | - | - |" in text
    assert "(b) concurrent 16 sessions turn 2: failed [], unmatched 1, moved 2" in text
