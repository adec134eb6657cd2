"""The GPU layouts in docs/deploy.md load, fit on their GPUs, and place each replica."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from configs import Config, load_config
from launcher.plan import gpu_shares, make_plan

DEPLOY_MD = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def _layouts() -> list[tuple[str, dict[str, Any]]]:
    section = DEPLOY_MD.read_text().split("### GPUs per replica", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    return [(block.splitlines()[0].lstrip("# "), tomllib.loads(block)) for block in blocks]


def _on_vllm(data: dict[str, Any]) -> Config:
    base: dict[str, Any] = msgspec.to_builtins(load_config())
    for section, values in data.items():
        base[section].update(values)
    base["chat"]["backend"] = base["tool"]["backend"] = "vllm"
    return msgspec.convert(base, Config)


def test_there_are_four_layouts() -> None:
    """(a), (b), (c) and the 4-GPU one, as issue 12 measures them."""
    assert [name[:3] for name, _ in _layouts()] == ["(a)", "(b)", "(c)", "4 G"]


@pytest.mark.parametrize(("name", "data"), _layouts(), ids=lambda v: str(v)[:3])
def test_layout_fits_and_places_every_replica(name: str, data: dict[str, Any]) -> None:
    """Each layout's shares fit, and a replica given a GPU gets it in its env."""
    config = _on_vllm(data)
    shares = gpu_shares(config)
    assert all(sum(s.values()) <= 1.0 for s in shares.values()), shares
    plan = make_plan(config)
    for slot in plan.actors:
        gpus = getattr(config.actor, f"{slot.kind}_gpus")
        if gpus:
            assert slot.env["CUDA_VISIBLE_DEVICES"] == gpus[slot.index], name
    assert len(plan.actors) == config.actor.tool_replicas + config.actor.chat_replicas
