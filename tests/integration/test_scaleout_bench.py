"""A tiny run of ``python -m bench.scaleout``: every scenario measured, recovery timed.

No timing assertions beyond signs and order: the machine is shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.benches import run_module

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_scaleout_smoke(tmp_path: Path) -> None:
    """Four scenarios (1 and 2 replicas, 1 and 3 nodes) serve turns without errors,
    and a SIGKILLed replica serves again after a positive, bounded time."""
    out = tmp_path / "report.json"
    await run_module(
        "bench.scaleout",
        "--sessions",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--json",
        str(out),
    )
    report = json.loads(out.read_text())
    shapes = [(s["name"], s["chat_replicas"], s["nodes"]) for s in report["scenarios"]]
    assert shapes == [
        ("replicas-1", 1, 1),
        ("replicas-2", 2, 1),
        ("cluster-1", 1, 3),
        ("cluster-2", 2, 3),
    ]
    for scenario in report["scenarios"]:
        assert scenario["errors"] == {}, scenario
        assert scenario["turns"] > 0 and scenario["turns_per_s"] > 0
        ttft = scenario["first_token_ms"]
        assert 0 < ttft["p50"] <= ttft["p99"] <= ttft["max"]
    recovery = report["recovery"]
    assert recovery["restarts"] == 1
    # Not before the edges declared the old process lost; well within the timeout.
    assert recovery["actor_lost_after_s"] <= recovery["kill_to_first_token_s"] < 60
    assert recovery["failed_probes"].get("no_actor_available", 0) >= 1
