"""Raw vs full stack from one device run: per model, mode, sessions and turn.

Joins ``bench.gpu_raw``'s and ``bench.gpu_fullstack``'s JSON and prints a Markdown
table: turn TTFT p50 (raw with the tool's 10- and 2-token answers, full stack), the
ratio full / raw-2, the tool decision p50 on both sides and its difference, and the
chat prompt's cached / total tokens (raw's mean, the full stack's median). Then the
issue's turn-2 targets, each marked met or missed:

* full stack / raw-2 turn TTFT at most 1.05 (1 and 16 sessions, both modes);
* tool decision within 5 ms of raw-2 (same rows);
* turn-2 TTFT at 16 sessions, concurrent, at most 80 ms (next-turn warming).

Then each leg (tool, chat) of every row by stage, raw 2 beside the full stack: where
its wait for its first event went (``bus.events.LegTiming``, and the hops to and from
the actor on the full stack's client clock).

``--multigpu`` adds the layouts' report (issue 12, ``bench.gpu_fullstack
--layouts``): per layout, mode, sessions and turn, turns/s, tool decision and turn
TTFT p50/p95, per-token latency, each chat replica's prefix-cache hit rate (cached /
prompt tokens, with the sessions it served), sessions that changed replica, and the
ratio of turns/s and TTFT p50 to layout (a) on the same row. Several files (calls of
one device session) are read as one run.

    python -m bench.gpu_report gpu_raw.json gpu_fullstack.json > report.md
    python -m bench.gpu_report --multigpu gpu_multigpu.json > multigpu.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "multigpu_report", "report"]

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
    lines += ["", *_stage_table(full, raw_rows, default_model)]
    failed = [r for r in full if r.get("failed")]
    if failed:
        lines += ["", f"{len(failed)} full-stack rows had failed turns, e.g. {failed[0]['failed']}"]
    return "\n".join(lines)


STAGES = ("inbound", "prompt", "intake", "wait", "prefill", "return", "first_event", "outbound")


def _stage_table(
    full: Sequence[dict[str, Any]],
    raw_rows: dict[tuple[Key, int], dict[str, Any]],
    default_model: str,
) -> list[str]:
    """Each leg's wait for its first event by stage, raw 2 beside the full stack."""
    lines = [
        "Where each leg's wait for its first event went, p50 ms per stage (bus.events."
        "LegTiming; inbound / outbound: the client's clock to the actor's and back; raw "
        "has no hops and builds its prompt before its clock). first = to the leg's first "
        "event (tool: the decision, raw's its first token; chat: the turn TTFT). "
        "spread = last minus first leg of the burst at the engine's intake (queued) and "
        "first step (scheduled).",
        "",
        "| mode | sessions | turn | leg | side | "
        + " | ".join(STAGES)
        + " | first | spread queued / scheduled |",
        "|---|---:|---:|---|---|" + "---:|" * (len(STAGES) + 2),
    ]
    for row in full:
        if "tool_stages_ms" not in row:
            continue
        key = (row.get("chat_model", default_model), row["mode"], row["sessions"], row["turn"])
        raw2 = raw_rows.get((key, 2))
        for leg in ("tool", "chat"):
            sides = [("full", row, _p50(row.get("tool" if leg == "tool" else "ttft")))]
            if raw2 and f"{leg}_stages_ms" in raw2:
                first = raw2["tool_first_ms"] if leg == "tool" else raw2["turn_ttft_ms"]
                sides.insert(0, ("raw 2", raw2, _p50(first)))
            for side, source, first_ms in sides:
                stages = source.get(f"{leg}_stages_ms") or {}
                spread = source.get(f"{leg}_spread_ms") or {}
                cells = " | ".join(_fmt(float(stages.get(name, math.nan))) for name in STAGES)
                lines.append(
                    f"| {key[1]} | {key[2]} | {key[3]} | {leg} | {side} | {cells} | "
                    f"{_fmt(first_ms)} | {_fmt(float(spread.get('queued', math.nan)))} / "
                    f"{_fmt(float(spread.get('scheduled', math.nan)))} |"
                )
    return lines


def _check(text: str, ok: bool) -> str:
    return f"- {'met' if ok else 'MISSED'}: {text}"


BASE_LAYOUT = "a"
LayoutKey = tuple[str, str, int, int]  # mode, chat model, sessions, turn


def _p50_p95(cell: Any) -> str:
    if not isinstance(cell, dict) or not cell.get("n"):
        return NONE
    return f"{cell['p50']:.1f} / {cell['p95']:.1f}"


def _replicas(row: dict[str, Any]) -> str:
    replicas = row.get("replicas") or {}
    if not replicas:
        return NONE
    return ", ".join(
        f"{name} {r['hit_rate']:.2f} ({r['sessions']:.0f})" for name, r in replicas.items()
    )


def multigpu_report(runs: Sequence[dict[str, Any]]) -> str:
    """The layouts' Markdown report of one device session (one or more files)."""
    rows = [row for run in runs for row in run.get("rows", [])]
    lines = []
    for run in runs:
        lines.append(f"device: {run.get('device', '?')}; GPUs planned for: {run.get('gpus', '?')}")
        for layout in run.get("layouts", []):
            lines.append(f"- ({layout['name']}) {layout['title']}: {layout['placement']}")
    base: dict[LayoutKey, dict[str, Any]] = {}
    for row in rows:
        if row.get("layout") == BASE_LAYOUT:
            base[(row["mode"], row.get("chat_model", ""), row["sessions"], row["turn"])] = row
    lines += ["", *_layout_summary(rows)]
    lines += [
        "",
        "Per turn; ms p50 / p95; hit rate = cached / prompt tokens per chat replica "
        "(sessions it served); moved = sessions served by another replica than on their "
        "previous turn; ÷ (a) = this layout's figure over layout (a)'s on the same row.",
        "",
        "| layout | mode | sessions | turn | turns/s | tool decision | turn TTFT | per token "
        "| hit rate per replica | moved | turns/s ÷ (a) | TTFT p50 ÷ (a) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    problems = []
    for row in rows:
        key = (row["mode"], row.get("chat_model", ""), row["sessions"], row["turn"])
        ref = base.get(key)
        tps = float(row.get("turns_per_s", math.nan))
        ttft = _p50(row.get("ttft"))
        tps_ratio = tps / float(ref["turns_per_s"]) if ref and ref.get("turns_per_s") else math.nan
        ref_ttft = _p50(ref.get("ttft")) if ref else math.nan
        ttft_ratio = ttft / ref_ttft if ref_ttft and not math.isnan(ref_ttft) else math.nan
        lines.append(
            f"| {row.get('layout', '?')} | {row['mode']} | {row['sessions']} | {row['turn']} | "
            f"{_fmt(tps, 2)} | {_p50_p95(row.get('tool'))} | {_p50_p95(row.get('ttft'))} | "
            f"{_fmt(_p50(row.get('per_token')), 2)} | {_replicas(row)} | "
            f"{row.get('moved', NONE)} | {_fmt(tps_ratio, 2)} | {_fmt(ttft_ratio, 2)} |"
        )
        if row.get("failed") or row.get("unmatched") or row.get("moved"):
            problems.append(
                f"- ({row.get('layout')}) {row['mode']} {row['sessions']} sessions turn "
                f"{row['turn']}: failed {row.get('failed')}, unmatched {row.get('unmatched')}, "
                f"moved {row.get('moved')}"
            )
    if problems:
        lines += ["", "Rows with failed turns, legs not seen on the bus or moved sessions:"]
        lines += problems
    return "\n".join(lines)


def _layout_summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Turns/s over all turns of a scenario (turns over the bursts' time) per layout,
    mode and sessions, and its ratio to layout (a)'s."""
    totals: dict[tuple[str, str, str, int], list[float]] = {}
    for row in rows:
        tps = float(row.get("turns_per_s") or 0.0)
        key = (row.get("layout", "?"), row["mode"], row.get("chat_model", ""), row["sessions"])
        ok_and_time = totals.setdefault(key, [0.0, 0.0])
        if tps > 0:
            ok_and_time[0] += row["ok"]
            ok_and_time[1] += row["ok"] / tps
    rate = {key: ok / time_s if time_s else math.nan for key, (ok, time_s) in totals.items()}
    lines = [
        "Turns/s over all turns of each scenario (turns over the time of their bursts):",
        "",
        "| layout | mode | sessions | turns/s | ÷ (a) |",
        "|---|---|---:|---:|---:|",
    ]
    for (layout, mode, model, sessions), value in rate.items():
        ref = rate.get((BASE_LAYOUT, mode, model, sessions), math.nan)
        ratio = value / ref if ref and not math.isnan(ref) else math.nan
        lines.append(f"| {layout} | {mode} | {sessions} | {_fmt(value, 2)} | {_fmt(ratio, 2)} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_report", description=__doc__)
    parser.add_argument("raw", type=Path, nargs="?")
    parser.add_argument("full", type=Path, nargs="?")
    parser.add_argument("--multigpu", type=Path, nargs="+", default=[], metavar="JSON")
    args = parser.parse_args(argv)
    if (args.raw is None) != (args.full is None) or (args.raw is None and not args.multigpu):
        parser.error("give RAW and FULL, --multigpu FILE..., or both")
    parts = []
    if args.raw is not None and args.full is not None:
        parts.append(report(json.loads(args.raw.read_text()), json.loads(args.full.read_text())))
    if args.multigpu:
        runs = [json.loads(path.read_text()) for path in args.multigpu]
        parts.append(multigpu_report(runs))
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
