"""The multi-GPU run's layouts: which run on how many GPUs, that they fit, and the
order that starts each chat engine once (bench/gpu_layouts.py); no I/O."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from bench.gpu_layouts import Placement, placement_for, transition
from configs import Config, load_config
from launcher.plan import gpu_shares, make_plan


def _on_vllm(placement: Placement) -> Config:
    """The placement as a deployment of vLLM actors, which claim GPU memory."""
    data: dict[str, Any] = msgspec.to_builtins(load_config())
    data["actor"].update(placement.actor_section())
    data["chat"]["backend"] = data["tool"]["backend"] = "vllm"
    return msgspec.convert(data, Config)


@pytest.mark.parametrize(
    ("gpus", "layouts"),
    [(1, ["a", "c1"]), (2, ["a", "c", "b"]), (3, ["a", "c", "b"]), (4, ["a", "c", "b", "d"])],
)
def test_the_layouts_that_fit_the_gpus_run_in_order(gpus: int, layouts: list[str]) -> None:
    """One GPU gets the smoke (a, c1); two or three a, c, b; four and more add d."""
    assert [layout.name for layout in placement_for(gpus).layouts] == layouts
    assert [layout.name for layout in placement_for(8).layouts] == ["a", "c", "b", "d"]


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_every_placement_fits_and_places_each_replica(gpus: int) -> None:
    """The launcher accepts every placement on vLLM (shares within each GPU) and gives
    each replica its GPU; on one GPU the chat replicas split it by fraction."""
    placement = placement_for(gpus)
    config = _on_vllm(placement)
    shares = gpu_shares(config)
    assert all(sum(claims.values()) <= 1.0 + 1e-9 for claims in shares.values())
    env = {slot.name: slot.env for slot in make_plan(config).actors}
    assert env["tool-0"]["CUDA_VISIBLE_DEVICES"] == "0"
    for slot, gpu in zip(placement.chat_slots, placement.chat_gpus, strict=True):
        assert env[slot]["CUDA_VISIBLE_DEVICES"] == gpu
    if gpus == 1:
        assert shares == {"0": {"tool-0": 0.2, "chat-0": 0.35, "chat-1": 0.35}}
    else:
        assert shares["0"] == {"tool-0": 0.2, "chat-0": 0.7}
        assert all(shares[str(i)] == {f"chat-{i}": 0.9} for i in range(1, len(shares)))


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_going_through_the_layouts_starts_each_engine_once(gpus: int) -> None:
    """Deferred slots and the transitions start every chat replica exactly once, stop
    before they start, and leave exactly each layout's replicas running."""
    placement = placement_for(gpus)
    running = [s for s in placement.chat_slots if s not in placement.deferred()]
    assert running == list(placement.layouts[0].chats)
    starts = list(running)
    for layout in placement.layouts:
        stop, start = transition(running, layout)
        running = [s for s in running if s not in stop] + start
        starts += start
        assert sorted(running) == sorted(layout.chats)
    assert sorted(starts) == sorted(set(starts)) == sorted(placement.chat_slots)


def test_named_layouts_plan_only_the_replicas_they_use() -> None:
    """Asking for (a) and (b) on two GPUs plans chat-0 and chat-1 and runs them in
    the fixed order; a layout that needs more GPUs, or none at all, is refused."""
    placement = placement_for(2, ["b", "a"])
    assert [layout.name for layout in placement.layouts] == ["a", "b"]
    assert placement.chat_slots == ("chat-0", "chat-1")
    assert placement.deferred() == {"chat-1"}
    assert placement_for(4, ["a"]).chat_slots == ("chat-0",)
    with pytest.raises(ValueError, match="d do not run on 2"):
        placement_for(2, ["d"])
    with pytest.raises(ValueError, match="c1"):
        placement_for(2, ["c1"])
    with pytest.raises(ValueError, match="at least one GPU"):
        placement_for(0)


def test_describe_names_each_replicas_gpu_and_share() -> None:
    """A layout's description says where the tool and each serving replica are."""
    placement = placement_for(4)
    d = placement.layouts[-1]
    assert placement.describe(d) == (
        "tool-0 on GPU 0 at 0.20, chat-1 on GPU 1 at 0.90, chat-2 on GPU 2 at 0.90, "
        "chat-3 on GPU 3 at 0.90"
    )
