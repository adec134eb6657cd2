"""Raw vs full stack from one device run: per model, mode, sessions and turn.

Joins ``bench.gpu_raw``'s and ``bench.gpu_fullstack``'s JSON and prints a Markdown
table: turn TTFT p50 (raw with the tool's 10- and 2-token answers, full stack), the
ratio full / raw-2, the tool decision p50 on both sides and its difference, and the
chat prompt's cached / total tokens (raw's mean, the full stack's median). Then the
issue's turn-2 targets, each marked met or missed:

* full stack / raw-2 turn TTFT at most 1.05 (1 and 16 sessions, both modes);
* tool decision within 5 ms of raw-2 (same rows);
* turn-2 TTFT at 16 sessions, concurrent, at most 80 ms (next-turn warming).

    python -m bench.gpu_report gpu_raw.json gpu_fullstack.json > report.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "report"]

RATIO_TARGET = 1.05
TOOL_TARGET_MS = 5.0
WARM_TARGET_MS = 80.0
TARGET_SESSIONS = (1, 16)
TARGET_TURN = 2
NONE = "-"  # no figure (the raw side has no such row)

Key = tuple[str, str, int, int]  # chat model, mode, sessions, turn


def _p50(cell: Any) -> float:
    if isinstance(cell, dict):
        value = cell.get("p50", math.nan)
        return float(value) if value is not None else math.nan
    return math.nan


def _fmt(value: float, digits: int = 1) -> str:
    return NONE if math.isnan(value) else f"{value:.{digits}f}"


def report(raw: dict[str, Any], full: list[dict[str, Any]]) -> str:
    """The Markdown report of one run's raw and full-stack results."""
    raw_rows: dict[tuple[Key, int], dict[str, Any]] = {}
    default_model = raw.get("models", {}).get("chat", ["?"])[0]
    for row in raw.get("rows", []):
        key = (row.get("chat_model", default_model), row["mode"], row["sessions"], row["turn"])
        raw_rows[(key, row["tool_tokens"])] = row
    lines = [
        f"device: {raw.get('device', '?')}; raw engine start {raw.get('engine_start', {})}",
        "",
        "| chat model | mode | sessions | turn | raw 10 | raw 2 | full stack | full / raw 2 "
        "| tool raw 2 | tool full | tool Δ | cached/prompt raw | cached/prompt full |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    checks: list[str] = []
    for row in full:
        key = (row.get("chat_model", default_model), row["mode"], row["sessions"], row["turn"])
        raw10, raw2 = raw_rows.get((key, 10)), raw_rows.get((key, 2))
        ttft = _p50(row.get("ttft"))
        r10 = _p50(raw10["turn_ttft_ms"]) if raw10 else math.nan
        r2 = _p50(raw2["turn_ttft_ms"]) if raw2 else math.nan
        tool_raw = _p50(raw2["tool_ms"]) if raw2 else math.nan
        tool_full = _p50(row.get("tool"))
        ratio = ttft / r2 if r2 and not math.isnan(r2) else math.nan
        raw_cache = f"{raw2['chat_cached_tokens']}/{raw2['chat_prompt_tokens']}" if raw2 else NONE
        full_cache = f"{row.get('cached_tokens_p50', 0):.0f}/{row.get('prompt_tokens_p50', 0):.0f}"
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {_fmt(r10)} | {_fmt(r2)} | "
            f"{_fmt(ttft)} | {_fmt(ratio, 2)} | {_fmt(tool_raw)} | {_fmt(tool_full)} | "
            f"{_fmt(tool_full - tool_raw)} | {raw_cache} | {full_cache} |"
        )
        if key[3] == TARGET_TURN and key[2] in TARGET_SESSIONS:
            where = f"{key[0]} {key[1]} {key[2]} sessions, turn {key[3]}"
            checks.append(_check(f"{where}: full/raw 2 = {_fmt(ratio, 2)}", ratio <= RATIO_TARGET))
            delta = tool_full - tool_raw
            checks.append(_check(f"{where}: tool Δ = {_fmt(delta)} ms", delta <= TOOL_TARGET_MS))
            if key[2] == 16 and key[1] == "concurrent":
                checks.append(_check(f"{where}: TTFT = {_fmt(ttft)} ms", ttft <= WARM_TARGET_MS))
    lines += ["", "Targets (turn 2):", *checks]
    failed = [r for r in full if r.get("failed")]
    if failed:
        lines += ["", f"{len(failed)} full-stack rows had failed turns, e.g. {failed[0]['failed']}"]
    return "\n".join(lines)


def _check(text: str, ok: bool) -> str:
    return f"- {'met' if ok else 'MISSED'}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_report", description=__doc__)
    parser.add_argument("raw", type=Path)
    parser.add_argument("full", type=Path)
    args = parser.parse_args(argv)
    print(report(json.loads(args.raw.read_text()), json.loads(args.full.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
