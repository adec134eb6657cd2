"""bench.prompt_cost runs on the tiny model and prints every figure with its conditions."""

from __future__ import annotations

import pytest

from bench import prompt_cost


def test_prints_conditions_and_every_row(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Old and new paths are measured in one run, at each history size asked for."""
    cache = tmp_path_factory.getbasetemp() / "tiny-models"  # shared with the engine tests
    prompt_cost.main(["--cache-dir", str(cache), "--history-tokens", "400,3500", "--repeat", "2"])
    out = capsys.readouterr().out
    assert "CPUs" in out and "median of 2" in out
    assert "tokenizer of tiny-qwen2" in out and "split level lines" in out
    rows = {line[:28].strip(): line[28:].split() for line in out.splitlines()[2:]}
    assert set(rows) >= {
        "old: chat prompt, loop",
        "new: chat turn, loop CPU",
        "old: burst of 16, wall",
        "new: burst of 16, stall",
        "vLLM detokenizer prefill",
    }
    history = [int(cell) for cell in rows["history tokens"]]
    assert history[0] >= 400 and history[1] >= 3500
    chat_tokens = [int(cell) for cell in rows["chat prompt tokens"]]
    assert chat_tokens[1] < history[1] + 900  # 3,500 history tokens were trimmed to 3,000
    timings = [cell for name, cells in rows.items() if ":" in name for cell in cells]
    assert timings and all(float(cell) > 0 for cell in timings)
