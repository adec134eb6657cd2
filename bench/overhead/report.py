"""The report as text, as a plot, and back from JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from bench.overhead.profile import render_profile
from bench.overhead.spec import P99_BOUND_MS, PhaseResult

__all__ = [
    "json_default",
    "load_report",
    "plot_report",
    "render_conditions",
    "render_header",
    "render_ladder_step",
    "render_result",
    "render_row",
    "render_rtt",
    "render_summary",
]

# --- output ------------------------------------------------------------------------


def render_conditions(cond: Mapping[str, Any]) -> str:
    return (
        f"machine: {cond['cpu_model']}, {cond['cores']} cores, load {cond['load_before']}; "
        f"Python {cond['python']}, {cond['loop']}, websockets {cond['websockets']}, "
        f"msgspec {cond['msgspec']}\n"
        f"engine: bench, {cond['rate_per_session']:g} tokens/s per session, "
        f"{cond['tokens_per_turn']} tokens per turn; window {cond['duration_s']:g} s after "
        f"{cond['warmup_s']:g} s warm-up; cancel {cond['cancel']}; logs {cond['log_level']}; "
        f"ws compression {cond['compression']}; edge flush {cond['stream_flush_ms']:g} ms"
        f"{'; edge recording on' if cond.get('recording') else ''}\n"
    )


def render_header() -> str:
    return (
        f"{'sess':>4} {'side':<6} {'turns':>5} {'TTFT p50':>8} {'p99':>6} {'emit1':>6} "
        f"{'1way p50':>8} {'p99':>6} {'lag p99':>7} {'cxl p50':>7} {'p99':>6} "
        f"{'tok/s':>7} {'tok/frm':>7} {'us/tok':>6} "
        f"{'CPU% edge/actor/nats/direct/client/foreign/steal':>50}\n"
    )


def render_rtt(rtt: Mapping[str, float]) -> str:
    return (
        "WebSocket ping RTT to the direct server (two process hops): back to back "
        f"p50 {rtt['busy_p50']:.0f} us p99 {rtt['busy_p99']:.0f} us; 5 ms apart (CPUs idle "
        f"in between) p50 {rtt['idle_p50']:.0f} us p99 {rtt['idle_p99']:.0f} us\n\n"
    )


def _p(dist: Mapping[str, float] | None, q: str, width: int) -> str:
    return f"{dist[q]:>{width}.2f}" if dist else f"{'-':>{width}}"


def _cpu(result: PhaseResult) -> str:
    """Per kind of process; "edge" is all edge processes together, "chat" all replicas."""
    names = ("edge", "chat", "nats", "direct", "client", "foreign", "steal")
    values = [result.cpu_of(name) for name in names]
    return "/".join("-" if value is None else f"{value:.0f}" for value in values)


def _us(result: PhaseResult) -> str:
    """CPU per token of the process that forwards to clients: the edge, or the direct server."""
    value = result.cpu_us_per_token("edge" if result.side == "bus" else "direct")
    return "-" if value is None else f"{value:.0f}"


def render_result(result: PhaseResult) -> str:
    per_frame = result.tokens_received / result.token_frames if result.token_frames else 0.0
    errors = " ".join(f"{k}={v}" for k, v in result.errors.items())
    return (
        f"{result.sessions:>4} {result.side if result.deploy != 'both' else 'both':<6} "
        f"{result.turns:>5} {_p(result.ttft_ms, 'p50', 8)} {_p(result.ttft_ms, 'p99', 6)} "
        f"{_p(result.first_emit_ms, 'p50', 6)} "
        f"{_p(result.one_way_ms, 'p50', 8)} {_p(result.one_way_ms, 'p99', 6)} "
        f"{_p(result.engine_lag_ms, 'p99', 7)} "
        f"{_p(result.cancel_to_abort_ms, 'p50', 7)} {_p(result.cancel_to_abort_ms, 'p99', 6)} "
        f"{result.tokens_per_s:>7.0f} {per_frame:>7.2f} {_us(result):>6} {_cpu(result):>50}"
        f"{'  errors: ' + errors if errors else ''}\n"
    )


def render_row(row: Mapping[str, Any]) -> str:
    def fmt(key: str, unit: str) -> str:
        value = row[key]
        return "-" if value is None else f"{value:+.2f}{unit}" if unit else f"{value:.2f}x"

    return (
        render_result(row["bus"])
        + render_result(row["direct"])
        + f"{'':>4} added  TTFT p50 {fmt('added_ttft_p50_ms', ' ms')} "
        f"p99 {fmt('added_ttft_p99_ms', ' ms')}; one-way p50 {fmt('added_one_way_p50_ms', ' ms')} "
        f"p99 {fmt('added_one_way_p99_ms', ' ms')}; ratio a/b TTFT p50 "
        f"{fmt('ratio_ttft_p50', '')} p99 {fmt('ratio_ttft_p99', '')}, one-way p50 "
        f"{fmt('ratio_one_way_p50', '')} p99 {fmt('ratio_one_way_p99', '')}\n"
    )


def render_ladder_step(step: Mapping[str, Any], edges: int | None = None) -> str:
    where = f", {edges} edge processes" if edges is not None else ""
    lines = [
        f"throughput{where}: {step['rate']:g} tokens/s x sessions = {step['offered']:g} offered"
    ]
    for side in ("bus", "direct"):
        if side in step:
            lines.append(render_result(step[side]).rstrip("\n"))
    return "\n".join(lines) + "\n"


def render_summary(report: Mapping[str, Any]) -> str:
    lines = [""]
    if report.get("both") is not None:
        lines.append("deploy=both (tool hop, then chat):")
        lines.append(render_result(report["both"]).rstrip("\n"))
    best = report["throughput"]["max_tokens_per_s"]
    first = report["throughput"]["first_failure_offered"]
    lines.append(
        f"max tokens/s with one-way p99 <= {P99_BOUND_MS:g} ms: bus {best['bus']} (first "
        f"failed at {first['bus']} offered), direct {best['direct']} (first failed at "
        f"{first['direct']} offered)"
    )
    edge_ladders = report.get("edge_ladders") or []
    if edge_ladders:
        first_edges = report.get("settings", {}).get("edges", (1,))[0]
        parts = [f"{first_edges}: {best['bus']}"]
        for ladder in edge_ladders:
            value = ladder["max_tokens_per_s"]["bus"]
            ratio = f" ({value / best['bus']:.2f}x)" if value and best["bus"] else ""
            parts.append(f"{ladder['edges']}: {value}{ratio}")
        lines.append(
            f"bus max tokens/s with one-way p99 <= {P99_BOUND_MS:g} ms by edge processes: "
            + "; ".join(parts)
        )
    for target in report["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        lines.append(
            f"target {target['name']}: {target['target']}, measured {target['measured']} -> "
            f"{verdict}"
        )
    if report.get("profile"):
        for name in ("edge", "chat"):
            if name in report["profile"]:
                lines.append(render_profile(name, report["profile"][name]))
    return "\n".join(lines) + "\n"


def plot_report(report: Mapping[str, Any], path: str) -> None:
    """Four panels: TTFT, one-way and cancel->abort vs sessions; p99 vs tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    figure, axes = plt.subplots(2, 2, figsize=(10, 7), layout="constrained")
    rows = report["latency"]
    sessions = [row["sessions"] for row in rows]
    colors = {"bus": "#c44e52", "direct": "#4c72b0"}
    panels = (
        (axes[0][0], "ttft_ms", "time to first token (ms)"),
        (axes[0][1], "one_way_ms", "engine emit -> client, per token (ms)"),
        (axes[1][0], "cancel_to_abort_ms", "cancel sent -> engine abort (ms)"),
    )
    for axis, metric, title in panels:
        for side in ("bus", "direct"):
            for q, style in (("p50", "-o"), ("p99", "--s")):
                values = [(getattr(row[side], metric) or {}).get(q, float("nan")) for row in rows]
                axis.plot(sessions, values, style, color=colors[side], label=f"{side} {q}")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(sessions, [str(s) for s in sessions])
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_xlabel("sessions")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    axis = axes[1][1]
    ladder = report["throughput"]
    for side in ("bus", "direct"):
        points = [
            (step[side].tokens_per_s, step[side].one_way_ms["p99"])
            for step in ladder["steps"]
            if side in step and step[side].one_way_ms
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, "-o", color=colors[side], label=f"{side} one-way p99")
    for ladder in report.get("edge_ladders") or []:
        points = [
            (step["bus"].tokens_per_s, step["bus"].one_way_ms["p99"])
            for step in ladder["steps"]
            if "bus" in step and step["bus"].one_way_ms
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            label = f"bus, {ladder['edges']} edges, one-way p99"
            axis.plot(xs, ys, "-^", color="#dd8452", label=label)
    axis.axhline(P99_BOUND_MS, color="gray", linestyle=":", label=f"{P99_BOUND_MS:g} ms")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    axis.set_xlabel(f"tokens/s delivered ({ladder['sessions']} sessions)")
    axis.set_title("throughput vs one-way p99 (ms)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    cond = report["conditions"]
    figure.suptitle(
        f"yap-bus overhead: (a) bus vs (b) direct, {cond['cpu_model']} x{cond['cores']}, "
        f"{cond['rate_per_session']:g} tok/s/session, {cond['tokens_per_turn']} tokens/turn",
        fontsize=10,
    )
    figure.savefig(path, dpi=80)
    plt.close(figure)


def load_report(path: str) -> dict[str, Any]:
    """A ``--json`` report read back, its phases as :class:`PhaseResult` again."""
    report: dict[str, Any] = json.loads(Path(path).read_text())
    for row in report["latency"]:
        for side in ("bus", "direct"):
            row[side] = msgspec.convert(row[side], PhaseResult)
    ladders = [report["throughput"], *(report.get("edge_ladders") or [])]
    for ladder in ladders:
        for step in ladder["steps"]:
            for side in ("bus", "direct"):
                if side in step:
                    step[side] = msgspec.convert(step[side], PhaseResult)
    return report


def json_default(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
