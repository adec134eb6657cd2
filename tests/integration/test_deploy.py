"""The deployment examples (configs/, deploy/) parse and agree with the code.

No container engine or Kubernetes cluster exists here, so nothing is built or
applied: these tests check what can be checked without one. The manifests'
commands must be entrypoints that exist, their env vars ones that a process reads,
their ports the config's, and the NATS users and permissions bus/permissions.py's.
nats-server itself validates the bare-host node config (``nats-server -t``).
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.permissions import authorization_config, shared_roles
from configs import load_config
from configs.loader import ENV_OVERRIDES
from launcher.nats import find_nats_server

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# Read by the entrypoints themselves, besides the config overrides.
IDENTITY_ENV = {"YAP_ACTOR_ID", "YAP_EDGE_ID"}
ENTRYPOINTS = {("edge",), ("actors", "tool"), ("actors", "chat")}
# Static configs cannot name every pod: they use the role-wide users.
ROLES = shared_roles()
_ROLE_ENV = {role.user: f"YAP_{role.user.upper()}_PASSWORD" for role in ROLES}


def _manifests() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / "yap-bus.yaml").read_text()) if d]


def _containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (doc["metadata"]["name"], container)
        for doc in _manifests()
        if doc["kind"] in ("Deployment", "StatefulSet")
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]


def _expected_users() -> list[dict[str, Any]]:
    """bus/permissions.py's users, each password the env var that holds it."""
    text = authorization_config(ROLES, {user: f"${var}" for user, var in _ROLE_ENV.items()})
    return json.loads(text.removeprefix("authorization "))["users"]


def test_cluster_config_loads_with_three_replicas() -> None:
    """configs/cluster.toml decodes strictly, lists three nodes, replicates sessions."""
    config = load_config(ROOT / "configs" / "cluster.toml")
    assert len(config.bus.urls) == 3
    assert config.edge.session_replicas == 3
    assert config.bus.prefer_first


def test_config_map_is_the_cluster_config() -> None:
    """The ConfigMap carries configs/cluster.toml verbatim (regenerate it when that
    file changes), and it loads."""
    config_map = next(d for d in _manifests() if d["kind"] == "ConfigMap")
    embedded = config_map["data"]["config.toml"]
    assert embedded.strip() == (ROOT / "configs" / "cluster.toml").read_text().strip()
    tomllib.loads(embedded)


def test_manifest_commands_env_and_ports_match_the_schema(tmp_path: Path) -> None:
    """Each container runs an entrypoint with the mounted config, sets only env vars
    that a process reads (with values the loader accepts), and exposes the ports the
    config says its process listens on."""
    config_path = tmp_path / "config.toml"
    config_path.write_text((ROOT / "configs" / "cluster.toml").read_text())
    seen = set()
    for name, container in _containers():
        command = container["command"]
        assert command[:2] == ["python", "-m"], name
        assert command[-2:] == ["--config", "/etc/yap/config.toml"], name
        entry = tuple(command[2:-2])
        assert entry in ENTRYPOINTS, (name, entry)
        seen.add(entry)
        env = {e["name"]: e for e in container["env"]}
        unknown = set(env) - set(ENV_OVERRIDES) - IDENTITY_ENV
        assert not unknown, (name, unknown)
        literal = {k: e["value"] for k, e in env.items() if "value" in e}
        config = load_config(config_path, literal)  # values the loader accepts
        ports = {p["containerPort"] for p in container["ports"]}
        if entry == ("edge",):
            assert ports == {config.edge.port}
            assert container["readinessProbe"]["httpGet"] == {
                "path": "/healthz",
                "port": config.edge.port,
            }
            assert env["YAP_EDGE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            assert literal["YAP_BUS_USER"] == "edge"
        else:
            kind = entry[1]
            assert ports == {getattr(config.actor, f"{kind}_metrics_port")}
            assert env["YAP_ACTOR_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            assert name == kind, "pod names are the actor ids: chat-0, chat-1, ..."
            assert literal["YAP_BUS_USER"] == "actor"
        assert len(config.bus.urls) == 3
        for url in config.bus.urls:  # the chart's pods behind its headless service
            assert re.fullmatch(r"nats://nats-[0-2]\.nats-headless:4222", url), url
    assert seen == ENTRYPOINTS


def test_edge_service_targets_the_edge_port() -> None:
    """The Service sends port 8000 to the edge pods' edge port."""
    service = next(d for d in _manifests() if d["kind"] == "Service")
    edge = next(d for d in _manifests() if d["kind"] == "Deployment")
    labels = edge["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == labels
    assert (
        service["spec"]["ports"][0]["targetPort"]
        == load_config(ROOT / "configs" / "cluster.toml").edge.port
    )


def test_helm_values_have_our_users_and_a_replicated_jetstream() -> None:
    """The NATS chart values: 3 clustered nodes, JetStream on disk, and exactly the
    per-role users and permissions that `just up` generates."""
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    assert config["jetstream"]["enabled"] is True and config["jetstream"]["fileStore"]
    users = config["merge"]["authorization"]["users"]
    for user in users:  # the chart's unquoted form of a variable
        match = re.fullmatch(r"<< (\$[A-Z_]+) >>", user["password"])
        assert match, user["password"]
        user["password"] = match.group(1)
    assert users == _expected_users()
    env = values["container"]["env"]
    assert set(env) == set(_ROLE_ENV.values())


def test_bare_host_node_config_is_valid_and_has_our_users(tmp_path: Path) -> None:
    """configs/nats-cluster.conf passes `nats-server -t` with its variables set,
    fails without them, and its authorization is bus/permissions.py's."""
    conf = ROOT / "configs" / "nats-cluster.conf"
    env = {"NATS_SERVER_NAME": "nats-0", "YAP_ROUTE_PASSWORD": "r"}
    env |= {var: "p" for var in _ROLE_ENV.values()}
    binary = find_nats_server()
    ok = subprocess.run(
        [binary, "-t", "-c", str(conf)], env=env, capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = subprocess.run(
        [binary, "-t", "-c", str(conf)], env={}, capture_output=True, text=True, timeout=30
    )
    assert missing.returncode != 0
    text = conf.read_text()
    block = text[text.index("authorization {\n") + len("authorization ") :]
    # Unquoted variables are nats-server syntax; quote them to read the block as JSON.
    users = json.loads(re.sub(r": (\$[A-Z_]+)", r': "\1"', block))["users"]
    assert users == _expected_users()
    assert "ping_interval" in text


@pytest.mark.parametrize("path", ["deploy/Containerfile"])
def test_containerfile_runs_the_entrypoints(path: str) -> None:
    """The image's default command is the edge with the mounted config, and it
    exposes the edge and metrics ports of the cluster config."""
    text = (ROOT / path).read_text()
    cmd = json.loads(text.split("\nCMD ", 1)[1].splitlines()[0])
    assert cmd == ["python", "-m", "edge", "--config", "/etc/yap/config.toml"]
    config = load_config(ROOT / "configs" / "cluster.toml")
    exposed = {int(p) for p in text.split("\nEXPOSE ", 1)[1].splitlines()[0].split()}
    assert exposed == {
        config.edge.port,
        config.actor.tool_metrics_port,
        config.actor.chat_metrics_port,
    }
