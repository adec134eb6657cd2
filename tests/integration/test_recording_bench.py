"""``bench.overhead --recording``: the token path measured with the edge recording.

No timing assertions (the machine is shared): the run completes, its stream holds
the run's events, and the bus side delivered every token without errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.benches import run_module

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_overhead_with_recording(tmp_path: Path) -> None:
    """A one-level run with --recording reports recording on and an error-free bus side."""
    out = tmp_path / "report.json"
    await run_module(
        "bench.overhead",
        "--recording",
        *("--concurrency", "2", "--duration", "1", "--warmup", "0.3", "--tokens", "16"),
        *("--tput-rates", "", "--both-concurrency", "0", "--retries", "0", "--quiet-wait", "0"),
        *("--json", str(out)),
    )
    report = json.loads(out.read_text())
    assert report["conditions"]["recording"] is True
    (row,) = report["latency"]
    assert row["bus"]["errors"] == {} and row["bus"]["tokens_received"] > 0
    # The stream took the run's events: at least one per token the bus side delivered.
    assert report["recorded_messages"] >= row["bus"]["tokens_received"]
