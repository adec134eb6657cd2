"""scripts/gpu/fullstack.sh runs every step on the CPU (DRY_RUN=1) and reports.

The device calls run the same script with vLLM; here the tiny models stand in, so a
typo in a step, a flag or a report column fails on the CPU, not on the GPU's budget.
The dry run covers both calls' paths: both modes, raw and full stack, several turns,
and the chat model switch (EXTRA_CHAT_SHAPE).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "gpu" / "fullstack.sh"


def test_scripts_parse() -> None:
    """Every GPU script is valid bash."""
    for script in sorted((ROOT / "scripts" / "gpu").glob("*.sh")):
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.timeout(400)
def test_fullstack_dry_run_covers_both_calls(tmp_path: Path) -> None:
    """The dry run measures raw and full stack in both modes, switches the chat model,
    shows the next-turn warm as cached tokens on turn 2, and writes the report."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "OUT": str(out),
        "PYTHON": sys.executable,
        "SESSIONS": "1",
        "TURNS": "2",
        "THINK_S": "0.05",
        "EXTRA_CHAT_SHAPE": "mistral-nemo-12b",
        "EXTRA_SESSIONS": "1",
        "YAP_LOG_LEVEL": "WARNING",
    }
    # py-spy is optional (the bench extra does not bring it); profile when it is there.
    py_spy = shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").is_file()
    if py_spy:
        env["PROFILE"] = "1"
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=380
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    raw = json.loads((out / "gpu_raw.json").read_text())
    raw_keys = {(r["chat_model"], r["mode"], r["tool_tokens"], r["turn"]) for r in raw["rows"]}
    for model in ("tiny-qwen2", "tiny-llama3"):
        for mode in ("sequential", "concurrent"):
            for tokens in (10, 2):
                assert {(model, mode, tokens, 1), (model, mode, tokens, 2)} <= raw_keys
    full = json.loads((out / "gpu_fullstack.json").read_text())
    assert all(r["ok"] == r["sessions"] and not r["failed"] for r in full)
    by_key = {(r["chat_model"], r["mode"], r["turn"]): r for r in full}
    for model in ("tiny-qwen2", "tiny-llama3"):
        for mode in ("sequential", "concurrent"):
            first, second = by_key[(model, mode, 1)], by_key[(model, mode, 2)]
            # Turn 1 hits the warmed persona only; turn 2 also the history and the last
            # exchange, prefilled by the chat actor while the user "spoke".
            assert second["cached_tokens_p50"] > first["cached_tokens_p50"] + 100
            assert second["prompt_tokens_p50"] - second["cached_tokens_p50"] < 60
    report = (out / "report.md").read_text()
    assert "| tiny-llama3 | concurrent | 1 | 2 |" in report and "Targets (turn 2):" in report
    logs = sorted(p.name for p in (out / "system").glob("*.log"))
    assert sum(name.startswith("chat-actor") for name in logs) == 2  # the model switch
    if py_spy:
        top = (out / "profile" / "chat-actor-top.txt").read_text()
        assert "samples (py-spy" in top and "by area:" in top
