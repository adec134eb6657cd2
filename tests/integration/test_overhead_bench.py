"""A tiny run of ``python -m bench.overhead``: both sides measured, sane numbers.

No timing assertions: the machine is shared, so only the shape of the report and
the signs of its numbers are checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = (
    "ttft_ms",
    "ttft_excess_ms",
    "first_emit_ms",
    "one_way_ms",
    "engine_lag_ms",
    "cancel_to_abort_ms",
    "cancel_to_done_ms",
)


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def _check_phase(phase: dict[str, Any], side: str) -> None:
    assert phase["side"] == side
    assert phase["errors"] == {}
    assert phase["tokens_received"] > 0
    assert phase["tokens_per_s"] > 0
    assert phase["one_way_ms"]["count"] == phase["tokens_received"]
    for name in DISTRIBUTIONS:
        dist = phase[name]
        assert dist is None or dist["p50"] <= dist["p99"] <= dist["max"], name
    assert all(value >= 0 for value in _numbers(phase)), phase


async def test_overhead_smoke(tmp_path: Path) -> None:
    """Concurrency 1 and 4 for a second: a report with both sides and no negative numbers;
    with --edges 1,2 the throughput ladder runs again on two edge processes sharing the
    port, and the summary compares the two counts."""
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.overhead",
        "--concurrency",
        "1,4",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--tokens",
        "16",
        "--rate",
        "200",
        "--tput-sessions",
        "4",
        "--tput-tokens",
        "32",
        "--tput-rates",
        "100",
        "--both-concurrency",
        "4",
        "--edges",
        "1,2",
        "--retries",
        "0",
        "--quiet-wait",
        "0",
        "--json",
        str(out),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    report = json.loads(out.read_text())

    assert [row["sessions"] for row in report["latency"]] == [1, 4]
    for row in report["latency"]:
        _check_phase(row["bus"], "bus")
        _check_phase(row["direct"], "direct")
        assert row["bus"]["ttft_ms"] is not None and row["direct"]["ttft_ms"] is not None
        assert row["ratio_ttft_p50"] > 0
    step = report["throughput"]["steps"][0]
    _check_phase(step["bus"], "bus")
    _check_phase(step["direct"], "direct")
    _check_phase(report["both"], "bus")
    assert report["settings"]["edges"] == [1, 2]
    assert "edge-1" not in step["bus"]["cpu_percent"]
    [two] = report["edge_ladders"]
    assert two["edges"] == 2 and set(two["max_tokens_per_s"]) == {"bus"}
    two_step = two["steps"][0]
    assert "direct" not in two_step
    _check_phase(two_step["bus"], "bus")
    # Both edge processes are measured, each by its own pid.
    assert {"edge", "edge-1"} <= set(two_step["bus"]["cpu_percent"])
    text = output.decode(errors="replace")
    assert "throughput, 2 edge processes:" in text
    assert "by edge processes: 1: " in text and "; 2: " in text
    assert report["both"]["deploy"] == "both"
    assert {target["name"] for target in report["targets"]}
    assert report["conditions"]["cores"] >= 1
    assert report["ws_rtt_us"]["busy_p50"] > 0
    assert report["recorded_messages"] is None  # recording is off: no stream at all
