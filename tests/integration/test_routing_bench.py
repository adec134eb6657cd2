"""A tiny run of ``python -m bench.routing``: both routing modes, end to end.

Two chat replicas and an edge per mode, through the launcher library; no timing
assertions (the machine is shared), only that every turn was served and measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.benches import run_module

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SESSIONS, TURNS = 2, 3


async def test_routing_bench_serves_every_turn_in_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "routing.json"
    text = await run_module(
        "bench.routing",
        "--sessions",
        str(SESSIONS),
        "--turns",
        str(TURNS),
        "--tokens",
        "4",
        "--history-lines",
        "8",
        "--think-ms",
        "200",
        "--json",
        str(out),
    )
    assert "affine" in text and "queue" in text  # the printed table
    report = json.loads(out.read_text())
    assert report["conditions"]["chat_replicas"] == 2
    modes = {mode["mode"]: mode for mode in report["modes"]}
    assert set(modes) == {"affine", "queue"}
    for mode in modes.values():
        assert mode["errors"] == {} and mode["turns"] == SESSIONS * TURNS, mode
        assert 0 < mode["cached_tokens"] <= mode["prompt_tokens"]
        assert 0.0 <= mode["later_hit_rate"] <= 1.0
        ttft = mode["first_token_ms"]
        assert ttft["count"] == SESSIONS * TURNS and 0 < ttft["p50"] <= ttft["max"]
    # A session's later turns go to the replica that holds its persona and history.
    assert modes["affine"]["later_hit_rate"] > 0
