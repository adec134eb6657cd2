"""The launcher's pure parts: the plan, GPU shares, restart policy, TOML writer, identities."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bus import subjects
from bus.permissions import Role
from configs import Config, LauncherConfig, load_config
from launcher.identities import Identity, bus_authorization, identities, process_env
from launcher.plan import (
    PlanError,
    gpu_shares,
    make_plan,
    parse_replicas,
    with_cluster,
    with_overrides,
    with_replicas,
)
from launcher.restarts import RestartPolicy
from launcher.tomlfile import dumps


def config(**sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = msgspec.to_builtins(load_config())
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return msgspec.convert(data, Config)


# --- the plan ---------------------------------------------------------------------------


def test_default_plan_is_one_of_each() -> None:
    """The CPU default runs one nats-server, tool-0, chat-0 and edge-0."""
    plan = make_plan(load_config())
    assert [n.name for n in plan.nodes] == ["nats-server"]
    assert [(a.name, a.kind) for a in plan.actors] == [("tool-0", "tool"), ("chat-0", "chat")]
    assert [e.name for e in plan.edges] == ["edge-0"]
    assert not plan.clustered
    assert plan.nodes[0].store_dir == Path(".yap/nats")


def test_replicas_get_stable_slots_and_their_own_metrics_ports() -> None:
    """chat=3 gives chat-0..chat-2; replica i > 0 serves metrics on port + i * stride."""
    plan = make_plan(config(actor={"chat_replicas": 3, "tool_replicas": 2}))
    assert [a.name for a in plan.actors] == ["tool-0", "tool-1", "chat-0", "chat-1", "chat-2"]
    env = {a.name: a.env for a in plan.actors}
    assert env["chat-0"] == {}
    assert env["chat-2"] == {"CHAT_METRICS_PORT": "9302"}
    assert env["tool-1"] == {"TOOL_METRICS_PORT": "9201"}
    ports = [c.port for c in plan.ports]
    assert len(ports) == len(set(ports)), "two services would bind one port"
    assert {9101, 9201, 9102, 9202, 9302, 8000, 4222, 8222} <= set(ports)


def test_edge_processes_are_numbered_and_share_one_port() -> None:
    """edge.processes = 3 gives edge-0..edge-2 and one edge port claim."""
    plan = make_plan(config(edge={"processes": 3}))
    assert [e.name for e in plan.edges] == ["edge-0", "edge-1", "edge-2"]
    assert [c.port for c in plan.ports if c.role == "edge"] == [8000]


def test_deploy_mode_and_no_nats_shrink_the_plan() -> None:
    """deploy=chat has no tool slot; start_nats=False has no node and no nats port."""
    plan = make_plan(config(models={"deploy": "chat"}), start_nats=False)
    assert [a.name for a in plan.actors] == ["chat-0"]
    assert plan.nodes == ()
    assert all(c.role != "nats" for c in plan.ports)


def test_a_cluster_offsets_ports_and_data_dirs() -> None:
    """--cluster 3: node i on port + i, monitor + i, routes + i, data in node-i, and the
    session bucket replicated three times."""
    clustered = with_cluster(load_config(), 3)
    plan = make_plan(clustered)
    assert [(n.name, n.port, n.monitor_port, n.cluster_port) for n in plan.nodes] == [
        ("nats-0", 4222, 8222, 6222),
        ("nats-1", 4223, 8223, 6223),
        ("nats-2", 4224, 8224, 6224),
    ]
    assert plan.nodes[2].store_dir == Path(".yap/nats/node-2")
    assert clustered.edge.session_replicas == 3
    assert with_cluster(load_config(), 5).edge.session_replicas == 3


def test_port_claims_name_the_setting_that_moves_them() -> None:
    """Each port claim says which setting or flag moves it."""
    claims = {c.port: c for c in make_plan(load_config()).ports}
    assert "--edge-port" in claims[8000].setting
    assert "--nats-port" in claims[4222].setting
    assert "--nats-monitor-port" in claims[8222].setting
    assert "actor.chat_metrics_port" in claims[9102].setting


def test_gpu_placement_goes_to_each_replica() -> None:
    """Per-replica GPUs and fractions become CUDA_VISIBLE_DEVICES and CHAT_GPU_FRAC."""
    placed = config(
        actor={"chat_replicas": 2, "chat_gpus": ["0", "1"], "chat_gpu_fracs": [0.7, 0.9]},
        chat={"backend": "vllm"},
        tool={"backend": "vllm"},
    )
    env = {a.name: a.env for a in make_plan(placed).actors}
    assert env["chat-1"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["chat-1"]["CHAT_GPU_FRAC"] == "0.9"
    assert env["chat-0"]["CHAT_GPU_FRAC"] == "0.7"
    # tool-0 sees the default GPU (GPU 0 here) with its 0.20 beside chat-0's 0.70.
    assert gpu_shares(placed) == {
        "default": {"tool-0": 0.2},
        "0": {"chat-0": 0.7},
        "1": {"chat-1": 0.9},
    }


def test_gpu_shares_that_do_not_fit_are_refused() -> None:
    """Two chat replicas at the default 0.70 beside the tool on one GPU do not fit."""
    crowded = config(actor={"chat_replicas": 2}, chat={"backend": "vllm"}, tool={"backend": "vllm"})
    with pytest.raises(PlanError, match=r"default GPU.*chat-1 0.70.*= 1.60 > 1"):
        make_plan(crowded)
    fitted = config(
        actor={"chat_replicas": 2, "chat_gpu_fracs": [0.35, 0.35]},
        chat={"backend": "vllm"},
        tool={"backend": "vllm"},
    )
    assert sum(gpu_shares(fitted)["default"].values()) == pytest.approx(0.9)


def test_tensor_parallel_replica_claims_both_gpus() -> None:
    """A replica on "0,1" takes its share of each; another on GPU 1 must fit beside it."""
    tp = config(
        models={"deploy": "chat"},
        actor={"chat_replicas": 2, "chat_gpus": ["0,1", "1"], "chat_gpu_fracs": [0.6, 0.5]},
        chat={"backend": "vllm"},
    )
    with pytest.raises(PlanError, match="GPU 1"):
        make_plan(tp)


def test_cpu_backends_claim_no_gpu() -> None:
    """Replicas of the transformers engine on CPU are never refused for GPU memory."""
    assert gpu_shares(config(actor={"chat_replicas": 4})) == {}


def test_per_replica_lists_must_match_the_count() -> None:
    """A GPU list of the wrong length names the field."""
    with pytest.raises(msgspec.ValidationError, match="chat_gpus has 1 entries for 2"):
        config(actor={"chat_replicas": 2, "chat_gpus": ["0"]})


def test_parse_replicas() -> None:
    """--replicas chat=2,tool=1 parses; anything else is refused with the flag's shape."""
    assert parse_replicas("chat=2,tool=1") == {"chat": 2, "tool": 1}
    assert parse_replicas(" chat = 3 ") == {"chat": 3}
    for bad in ("chat", "edge=2", "chat=two", "chat=-1"):
        with pytest.raises(PlanError, match="KIND=COUNT"):
            parse_replicas(bad)


def test_with_replicas_keeps_lists_consistent() -> None:
    """--replicas changes the counts; a count that contradicts a GPU list is refused."""
    assert with_replicas(load_config(), {"chat": 2}).actor.chat_replicas == 2
    placed = config(actor={"chat_replicas": 2, "chat_gpus": ["0", "1"]})
    with pytest.raises(PlanError, match="chat_gpus"):
        with_replicas(placed, {"chat": 3})


# --- per-slot overrides ------------------------------------------------------------------


def test_two_edges_of_one_bus_in_different_modes() -> None:
    """edge-1 overridden onto its own port and concurrent mode: each edge slot knows its
    port, both ports are claimed, and the rest of edge-1's config is the deployment's."""
    base = config(edge={"processes": 2, "port": 8100})
    overrides = {
        "edge-1": {"edge": {"port": 8101}, "models": {"concurrent_model_call": True}},
    }
    plan = make_plan(base, overrides=overrides)
    assert [(e.name, e.port) for e in plan.edges] == [("edge-0", 8100), ("edge-1", 8101)]
    claims = {c.port: c for c in plan.ports if c.role == "edge"}
    assert set(claims) == {8100, 8101}
    assert "edge-1" in claims[8101].setting
    own = with_overrides(base, plan.edges[1].overrides)
    assert own.models.concurrent_model_call and not base.models.concurrent_model_call
    assert own.edge.api_key == base.edge.api_key and own.edge.processes == 2


def test_overrides_merge_nested_tables_key_by_key() -> None:
    """A dotted section sets only its keys: ignore_eos on, the rest of sampling kept."""
    base = config(chat={"sampling": {"temperature": 0.7}})
    merged = with_overrides(base, {"chat.sampling": {"ignore_eos": True}, "chat": {"model": "m"}})
    assert merged.chat.sampling.ignore_eos and merged.chat.sampling.temperature == 0.7
    assert merged.chat.model == "m" and merged.tool == base.tool
    assert with_overrides(base, {}) is base


def test_overrides_that_cannot_apply_are_refused() -> None:
    """A deployment-wide section, an unknown key, a wrong type or a slot the plan does
    not have is a PlanError that names it."""
    base = load_config()
    with pytest.raises(PlanError, match=r"not \[actor\]"):
        with_overrides(base, {"actor": {"chat_replicas": 2}})
    with pytest.raises(PlanError, match="max_outs"):
        with_overrides(base, {"chat": {"max_outs": 3}})
    with pytest.raises(PlanError, match=r"edge\.port"):
        with_overrides(base, {"edge": {"port": "high"}})
    with pytest.raises(PlanError, match="chat-3"):
        make_plan(base, overrides={"chat-3": {"chat": {"model": "m"}}})


def test_a_replicas_own_gpu_frac_counts_in_the_shares() -> None:
    """chat-1 at its own gpu_frac 0.35 beside chat-0 at 0.35 and the tool fits one GPU;
    the same override at 0.75 does not, and says so before anything starts."""
    base = config(
        actor={"chat_replicas": 2, "chat_gpu_fracs": []},
        chat={"backend": "vllm", "gpu_frac": 0.35},
        tool={"backend": "vllm"},
    )
    fits = {"chat-1": {"chat": {"gpu_frac": 0.35}}}
    assert gpu_shares(base, fits)["default"] == {"tool-0": 0.2, "chat-0": 0.35, "chat-1": 0.35}
    with pytest.raises(PlanError, match=r"chat-1 0\.75"):
        make_plan(base, overrides={"chat-1": {"chat": {"gpu_frac": 0.75}}})
    # A replica moved onto the CPU engine claims no GPU at all.
    cpu = {"chat-1": {"chat": {"backend": "transformers", "gpu_frac": 0.9}}}
    assert set(gpu_shares(base, cpu)["default"]) == {"tool-0", "chat-0"}


# --- restarts ---------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    """Consecutive crashes wait 0.5, 1, 2, 4 s... within the jitter, capped."""
    settings = LauncherConfig(
        backoff_initial_s=0.5, backoff_max_s=3.0, backoff_jitter=0.2, max_crashes=100
    )
    policy = RestartPolicy(settings, random.Random(7))
    delays = [policy.crashed(float(t)).delay_s for t in range(6)]
    for delay, base in zip(delays, (0.5, 1.0, 2.0, 3.0, 3.0, 3.0), strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    assert len(set(delays)) == len(delays), "no jitter"


def test_gives_up_at_max_crashes_within_the_window() -> None:
    """The K-th crash within the window gives up; crashes older than it do not count."""
    policy = RestartPolicy(LauncherConfig(max_crashes=3, crash_window_s=10.0), random.Random(1))
    assert not policy.crashed(0.0).give_up
    assert not policy.crashed(1.0).give_up
    assert policy.crashed(2.0).give_up
    spaced = RestartPolicy(LauncherConfig(max_crashes=3, crash_window_s=10.0), random.Random(1))
    records = [spaced.crashed(t) for t in (0.0, 11.0, 22.0, 33.0)]
    assert not any(r.give_up for r in records)
    assert [r.crashes_in_window for r in records] == [1, 1, 1, 1]


def test_a_quiet_window_resets_the_backoff() -> None:
    """After a whole window without crashes, the next delay is the initial one again."""
    settings = LauncherConfig(backoff_initial_s=1.0, backoff_jitter=0.0, crash_window_s=5.0)
    policy = RestartPolicy(settings, random.Random(0))
    assert [policy.crashed(t).delay_s for t in (0.0, 1.0, 2.0)] == [1.0, 2.0, 4.0]
    assert policy.crashed(100.0).delay_s == 1.0


# --- the TOML writer ----------------------------------------------------------------------


def test_effective_config_round_trips_through_toml() -> None:
    """dumps() of any config reads back, through the strict loader, as the same config."""
    original = config(
        edge={"allowed_origins": ["https://a.example", 'quote "x"']},
        bus={"servers": ["nats://a:4222", "nats://b:4222"], "password": "p\\w\u00e9\U0001f600"},
        actor={"chat_replicas": 2, "chat_gpu_fracs": [0.25, 1e-05]},
        chat={"sampling": {"stop": ["\n\n", "\x7f"]}},
    )
    text = dumps(msgspec.to_builtins(original))
    assert msgspec.convert(tomllib.loads(text), Config) == original


def test_toml_leaves_none_out() -> None:
    """None means "the default": it is left out, not written as a string."""
    text = dumps({"bus": {"url": "nats://x", "user": None}})
    assert tomllib.loads(text) == {"bus": {"url": "nats://x"}}


# --- identities -----------------------------------------------------------------------------


def test_every_slot_gets_an_identity_and_credentials() -> None:
    """Each actor and edge slot, the observer and the replay user have credentials;
    the env carries the slot's id and a bus user of its own, named by the id."""
    plan = make_plan(config(actor={"chat_replicas": 2}, edge={"processes": 2}))
    ids = identities(plan)
    assert [i.id for i in ids] == [
        "tool-0",
        "chat-0",
        "chat-1",
        "edge-0",
        "edge-1",
        "observer",
        "replay",
    ]
    authorization, credentials = bus_authorization(ids)
    assert set(credentials) == {i.id for i in ids}
    assert credentials["chat-1"].password in authorization
    env = process_env(Identity("actor", "chat-1"), credentials["chat-1"])
    assert env == {
        "YAP_ACTOR_ID": "chat-1",
        "YAP_BUS_USER": "chat-1",
        "YAP_BUS_PASSWORD": credentials["chat-1"].password,
    }
    assert credentials["edge-1"].user == "edge-1" and credentials["observer"].user == "observer"
    assert credentials["replay"].user == "replay"
    assert process_env(Identity("edge", "edge-1"), None) == {"YAP_EDGE_ID": "edge-1"}
    assert bus_authorization(ids)[1]["chat-1"].password != credentials["chat-1"].password


def test_extra_roles_get_users_beside_the_slots() -> None:
    """A run's own listener is admitted with its own password and subjects; a user name
    that a slot already has is refused."""
    ids = identities(make_plan(load_config()))
    tap = Role(user="bench-tap", publish=(), subscribe=(subjects.all_out("done"),))
    authorization, credentials = bus_authorization(ids, [tap])
    assert credentials["bench-tap"].user == "bench-tap"
    assert credentials["bench-tap"].password in authorization
    assert subjects.all_out("done") in authorization
    with pytest.raises(ValueError, match="chat-0"):
        bus_authorization(ids, [Role(user="chat-0", publish=(), subscribe=())])
