"""scripts/gpu/fullstack.sh and multigpu.sh run every step on the CPU (DRY_RUN=1).

The device calls run the same scripts with vLLM; here the tiny models stand in, so a
typo in a step, a flag or a report column fails on the CPU, not on the GPU's budget.
The fullstack dry run covers both calls' paths (both modes, raw and full stack,
several turns, the chat model switch) and the one-GPU smoke of the multi-GPU run
folded into it; the multigpu dry runs plan for four fake GPUs ("GPUs" exist only as
CUDA_VISIBLE_DEVICES and fractions in the plan), going through every layout, and for
one, the smoke alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
SCRIPTS = ROOT / "scripts" / "gpu"


def _dry_run(script: str, out: Path, work: Path, **env: str) -> list[str]:
    """Run ``script`` dry; the names packed into ``out/system.tar.gz``."""
    full_env = {
        **os.environ,
        "DRY_RUN": "1",
        "OUT": str(out),
        "WORK": str(work),
        "PYTHON": sys.executable,
        "TURNS": "2",
        "THINK_S": "0.05",
        "YAP_LOG_LEVEL": "WARNING",
        **env,
    }
    done = subprocess.run(
        ["bash", str(SCRIPTS / script)],
        env=full_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # A device call brings back at most 8 files: the small ones travel packed.
    assert len([p for p in out.rglob("*") if p.is_file()]) <= 7
    with tarfile.open(out / "system.tar.gz") as packed:
        return packed.getnames()


def _served(row: dict[str, Any]) -> set[str]:
    return set(row["replicas"])


def test_scripts_parse() -> None:
    """Every GPU script is valid bash."""
    for script in sorted(SCRIPTS.glob("*.sh")):
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.timeout(400)
def test_fullstack_dry_run_covers_both_calls(tmp_path: Path) -> None:
    """The dry run measures raw and full stack in both modes, switches the chat model,
    shows the next-turn warm as cached tokens on turn 2, runs the one-GPU multi-GPU
    smoke on a second chat replica, and writes the report."""
    out = tmp_path / "out"
    env = {
        "SESSIONS": "2",
        "EXTRA_CHAT_SHAPE": "mistral-nemo-12b",
        "EXTRA_SESSIONS": "1",
        "MULTIGPU_SMOKE": "1",
        "MULTIGPU_SESSIONS": "2",
        "MAX_BATCHED": "4096",
    }
    # py-spy is optional (the bench extra does not bring it); profile when it is there.
    py_spy = shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").is_file()
    if py_spy:
        env["PROFILE"] = "1"
    work = tmp_path / "work"
    packed = _dry_run("fullstack.sh", out, work, **env)
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
            # One chat replica during the main runs: every turn seen on the bus there.
            assert _served(first) == _served(second) == {"chat-0"}
            assert first["unmatched"] == 0 and second["turns_per_s"] > 0
            # Both legs' stamps came through the bus, hops included: every stage is set.
            assert 0 < second["tool_cached_tokens_p50"] < second["tool_prompt_tokens_p50"]
            for leg in ("tool", "chat"):
                stages = second[f"{leg}_stages_ms"]
                assert {"inbound", "prompt", "intake", "prefill", "outbound"} <= set(stages)
                assert all(value >= 0 for value in stages.values()), stages
    report = (out / "report.md").read_text()
    assert "| tiny-llama3 | concurrent | 1 | 2 |" in report and "Targets (turn 2):" in report
    assert "| concurrent | 1 | 2 | tool | full |" in report
    # The model switch restarted chat-0 alone, on a config of its own.
    chat0 = tomllib.loads((work / "system" / "config.chat-0.toml").read_text())
    assert chat0["chat"]["model"] == "tiny-llama3"
    # MAX_BATCHED reached both sides' engines.
    assert (
        chat0["chat"]["max_num_batched_tokens"] == chat0["tool"]["max_num_batched_tokens"] == 4096
    )
    assert "--max-num-batched-tokens 4096" in raw["command"]
    edge1 = tomllib.loads((work / "system" / "config.edge-1.toml").read_text())
    edge0 = tomllib.loads((work / "system" / "config.edge-0.toml").read_text())
    assert edge1["models"]["concurrent_model_call"] is True
    assert edge0["models"]["concurrent_model_call"] is False
    # Two lone edges on ports of their own, not two processes sharing one.
    assert edge0["edge"]["processes"] == edge1["edge"]["processes"] == 1
    assert edge0["edge"]["port"] != edge1["edge"]["port"]
    # The smoke: layout (a) is the main runs' rows, (c1) ran on both replicas' slots.
    smoke = json.loads((out / "gpu_multigpu.json").read_text())
    assert [layout["name"] for layout in smoke["layouts"]] == ["a", "c1"]
    rows = {(r["layout"], r["mode"], r["turn"]): r for r in smoke["rows"]}
    modes = ("sequential", "concurrent")
    assert set(rows) == {(name, m, t) for name in ("a", "c1") for m in modes for t in (1, 2)}
    for (layout, _, _), row in rows.items():
        assert row["ok"] == 2 and row["moved"] == 0 and row["unmatched"] == 0
        assert sum(r["sessions"] for r in row["replicas"].values()) == 2
        assert _served(row) <= ({"chat-0"} if layout == "a" else {"chat-0", "chat-1"})
    assert "| c1 | concurrent | 2 |" in report and "hit rate per replica" in report
    assert {"system/chat-0.log", "system/chat-1.log", "system/edge-1.log"} <= set(packed)
    assert not any(name.startswith("system/nats") for name in packed)
    if py_spy:
        assert "profile/chat-0-top.txt" in packed
        top = (work / "profile" / "chat-0-top.txt").read_text()
        assert "samples (py-spy" in top and "by area:" in top


@pytest.mark.timeout(400)
def test_multigpu_dry_run_goes_through_every_layout(tmp_path: Path) -> None:
    """Planned for four GPUs, the run measures (a), (c), (b) and (d) in that order,
    each on exactly its chat replicas, sessions staying on theirs, and reports each
    layout against (a)."""
    out = tmp_path / "out"
    work = tmp_path / "work"
    packed = _dry_run("multigpu.sh", out, work, GPUS="4", SESSIONS="3")
    assert "system/chat-3.log" in packed
    data = json.loads((out / "gpu_multigpu.json").read_text())
    assert data["gpus"] == 4
    assert [layout["name"] for layout in data["layouts"]] == ["a", "c", "b", "d"]
    serving = {"a": {"chat-0"}, "c": {"chat-0", "chat-1"}, "b": {"chat-1"}}
    serving["d"] = {"chat-1", "chat-2", "chat-3"}
    seen = set()
    for row in data["rows"]:
        seen.add((row["layout"], row["mode"], row["turn"]))
        assert row["ok"] == 3 and not row["failed"], row
        assert row["moved"] == 0 and row["unmatched"] == 0
        assert _served(row) <= serving[row["layout"]], row
        assert sum(r["sessions"] for r in row["replicas"].values()) == 3
        assert all(0 <= r["hit_rate"] <= 1 for r in row["replicas"].values())
    assert len(seen) == 4 * 2 * 2
    # (b) has one replica, on the second GPU; nothing else may serve there.
    assert all(_served(r) == {"chat-1"} for r in data["rows"] if r["layout"] == "b")
    report = (out / "report.md").read_text()
    assert "| d | sequential | 3 |" in report and "÷ (a)" in report
    actor = tomllib.loads((work / "system" / "config.toml").read_text())["actor"]
    assert actor["chat_gpus"] == ["0", "1", "2", "3"]
    assert actor["chat_gpu_fracs"] == [0.7, 0.9, 0.9, 0.9]


@pytest.mark.timeout(400)
def test_multigpu_dry_run_on_one_gpu_is_the_smoke(tmp_path: Path) -> None:
    """With one GPU the script runs the smoke alone: (a), then two chat replicas on the
    same GPU by memory fraction (c1), at its small default of 8 sessions."""
    out = tmp_path / "out"
    work = tmp_path / "work"
    _dry_run("multigpu.sh", out, work, GPUS="1")
    data = json.loads((out / "gpu_multigpu.json").read_text())
    assert [layout["name"] for layout in data["layouts"]] == ["a", "c1"]
    assert "chat-1 on GPU 0 at 0.35" in data["layouts"][1]["placement"]
    assert {(r["layout"], r["sessions"]) for r in data["rows"]} == {("a", 8), ("c1", 8)}
    for row in data["rows"]:
        assert row["ok"] == 8 and row["moved"] == 0 and row["unmatched"] == 0
        assert _served(row) <= ({"chat-0"} if row["layout"] == "a" else {"chat-0", "chat-1"})
    assert "| c1 | sequential | 8 |" in (out / "report.md").read_text()
