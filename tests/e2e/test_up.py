"""``python -m launcher up --detach`` with the real edge and actors, then ``down``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs.loader import ENV_OVERRIDES
from launcher.net import http_status
from tests.support.fakes import REPO_ROOT
from tests.support.ports import free_port
from tests.support.procs import ProcessId, descendants, process_id, until_gone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

_UP_TIMEOUT_S = 480.0
_DOWN_TIMEOUT_S = 90.0


def _config(path: Path, model_cache: Path) -> Path:
    cache = json.dumps(str(model_cache))
    engine = f'backend = "transformers"\nmodel = "tiny-qwen2"\nmodel_cache_dir = {cache}\n'
    path.write_text(
        '[edge]\napi_key = "e2e-key"\n\n'
        '[models]\ndeploy = "both"\n\n'
        f"[tool]\n{engine}\n"
        f"[chat]\n{engine}max_out = 16\n\n"
        "[actor]\nheartbeat_interval_s = 0.1\n\n"
        '[log]\nlevel = "INFO"\nformat = "text"\n'
    )
    return path


def _env() -> dict[str, str]:
    """The test's environment minus config overrides, with this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _launcher(*args: str, cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


async def test_up_detached_ready_then_down(tmp_path: Path, model_cache: Path) -> None:
    """up --detach returns once edge and both actors are ready; down leaves no process."""
    config = _config(tmp_path / "config.toml", model_cache)
    edge_port = free_port()
    up = _launcher(
        "up",
        "--detach",
        "--config",
        str(config),
        "--edge-port",
        str(edge_port),
        "--nats-port",
        "0",
        "--nats-monitor-port",
        "0",
        cwd=tmp_path,
        timeout_s=_UP_TIMEOUT_S,
    )
    log_path = tmp_path / ".yap" / "run" / "up.log"
    assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
    pid_file = tmp_path / ".yap" / "run" / "launcher.pid"
    processes: set[ProcessId] = set()
    try:
        launcher = process_id(int(pid_file.read_text()))
        assert launcher is not None
        processes = {launcher} | descendants(launcher[0])
        # The launcher, nats-server, two actors and the edge, at least.
        assert len(processes) >= 5, log_path.read_text()
        assert await http_status("127.0.0.1", edge_port, "/healthz") == 200
        log = log_path.read_text()
        for service in ("nats-server", "tool-0", "chat-0", "edge-0"):
            assert f"{service} ready in" in log or f"{service} ready on" in log, log

        # just status reads the live system from the bus, as the observer user.
        status = _launcher("status", "--once", cwd=tmp_path, timeout_s=30)
        assert status.returncode == 0, status.stderr
        table = status.stdout
        assert "tool  ready" in table and "chat  ready" in table, table
        assert "edge-" in table, table
        # The launcher's own table: every slot ready, none restarted.
        for slot in ("nats-server", "tool-0", "chat-0", "edge-0"):
            row = next(line for line in table.splitlines() if line.startswith(slot))
            assert row.split()[1] == "ready" and row.split()[3] == "0", table

        # The bus is locked down: the run's nats config has per-role users, and no
        # password of theirs reaches any log.
        access = json.loads((tmp_path / ".yap" / "run" / "bus.json").read_text())
        assert access["user"] == "observer" and access["password"]
        logs = log + "".join(p.read_text() for p in (tmp_path / ".yap").rglob("*.log"))
        assert access["password"] not in logs
        assert "yap_token" not in logs  # the API key neither
    finally:
        down = _launcher("down", cwd=tmp_path, timeout_s=_DOWN_TIMEOUT_S + 15)
    assert down.returncode == 0, down.stderr
    assert not await until_gone(processes, timeout_s=15.0), log_path.read_text()
    assert not pid_file.exists()
    assert "all services stopped" in log_path.read_text()
