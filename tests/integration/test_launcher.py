"""The launcher: child processes, the supervisor and the CLI, with fake actors and edge.

The fakes (``tests.support.fake_actor``, ``tests.support.fake_edge``) send ready
heartbeats and answer ``/healthz`` like the real services, so these tests cover
ordering, readiness, shutdown and "no orphans" without loading any model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from configs.loader import load_config
from configs.schema import Config
from launcher.net import http_status
from launcher.process import ChildProcess
from launcher.supervisor import LaunchOptions, Supervisor
from tests.support.fakes import (
    ACTORS_MODULE,
    EDGE_MODULE,
    fake_env,
    read_events,
)
from tests.support.ports import free_port
from tests.support.procs import ProcessId, descendants, process_id, until_gone

_PY = sys.executable
_DEADLINE_S = 30.0


# --- ChildProcess ---------------------------------------------------------------------


async def test_child_ignoring_sigterm_is_killed_with_its_group() -> None:
    """stop() escalates to SIGKILL after the timeout and kills the child's group too."""
    script = (
        "import signal, subprocess, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(grandchild.pid, flush=True)\n"
        "signal.pause()\n"
    )
    child = ChildProcess(
        "stubborn", [_PY, "-c", script], stdout=asyncio.subprocess.PIPE, stop_timeout_s=0.3
    )
    await child.start()
    assert child.stdout is not None and child.pid is not None
    grandchild = process_id(int(await asyncio.wait_for(child.stdout.readline(), _DEADLINE_S)))
    assert grandchild is not None
    code = await child.stop()
    assert code == -signal.SIGKILL
    assert not await until_gone({grandchild})


async def test_child_in_own_session() -> None:
    """A child leads its own session, so a terminal's Ctrl-C does not reach it."""
    script = "import os; print(os.getsid(0), os.getpgid(0), flush=True)"
    async with ChildProcess("probe", [_PY, "-c", script], stdout=asyncio.subprocess.PIPE) as child:
        assert child.stdout is not None
        sid, pgid = map(int, (await child.stdout.readline()).split())
        assert sid == pgid == child.pid
        assert await child.wait() == 0


def test_children_die_when_the_launcher_is_killed() -> None:
    """A SIGKILLed parent's ChildProcess children get SIGKILL too (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    parent_script = (
        "import asyncio, signal, sys\n"
        "from launcher.process import ChildProcess\n"
        "async def main():\n"
        "    sleeper = [sys.executable, '-c', 'import time; time.sleep(600)']\n"
        "    child = ChildProcess('sleeper', sleeper)\n"
        "    await child.start()\n"
        "    print(child.pid, flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    env = fake_env(os.environ, Path(os.devnull))
    with subprocess.Popen([_PY, "-c", parent_script], stdout=subprocess.PIPE, env=env) as parent:
        assert parent.stdout is not None
        orphan = process_id(int(parent.stdout.readline()))
        assert orphan is not None
        parent.kill()
        parent.wait()
    assert not asyncio.run(until_gone({orphan}))


# --- Supervisor -----------------------------------------------------------------------


def _config(tmp_path: Path, env: Mapping[str, str]) -> Config:
    config = load_config(None, env)
    server = msgspec.structs.replace(
        config.nats_server, port=0, monitor_port=0, store_dir=str(tmp_path / "nats")
    )
    return msgspec.structs.replace(config, nats_server=server)


def _fake_options(**overrides: Any) -> LaunchOptions:
    return LaunchOptions(
        actors_module=ACTORS_MODULE,
        edge_module=EDGE_MODULE,
        actor_ready_timeout_s=_DEADLINE_S,
        edge_ready_timeout_s=_DEADLINE_S,
        **overrides,
    )


class _Run:
    """A supervisor running as a task, with a way to wait until it is ready."""

    def __init__(self, config: Config, supervisor: Supervisor, ready: asyncio.Event) -> None:
        self.config = config
        self.supervisor = supervisor
        self.ready = ready
        self.task = asyncio.ensure_future(supervisor.run())

    async def until_ready(self) -> None:
        waiter = asyncio.ensure_future(self.ready.wait())
        done, _ = await asyncio.wait(
            {waiter, self.task}, timeout=_DEADLINE_S, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        assert waiter in done, f"not ready: finished={self.task.done()}"

    def processes(self) -> set[ProcessId]:
        found: set[ProcessId] = set()
        for pid in self.supervisor.pids.values():
            identity = process_id(pid)
            if identity is not None:
                found |= {identity} | descendants(pid)
        return found


def _start(
    tmp_path: Path, events: Path, options: LaunchOptions | None = None, **env_extra: str
) -> _Run:
    env = fake_env(os.environ, events, YAP_EDGE_PORT=str(free_port()), **env_extra)
    ready = asyncio.Event()
    config = _config(tmp_path, env)
    supervisor = Supervisor(config, env, options or _fake_options(), on_ready=ready.set)
    return _Run(config, supervisor, ready)


async def test_starts_in_order_and_stops_in_reverse(tmp_path: Path) -> None:
    """Tool, chat, edge start one after another; a stop ends them edge, chat, tool."""
    events = tmp_path / "events"
    run = _start(tmp_path, events)
    await run.until_ready()
    assert read_events(events) == ["start tool", "start chat", "start edge"]
    assert set(run.supervisor.pids) == {"nats-server", "tool actor", "chat actor", "edge"}
    assert await http_status(run.config.edge.host, run.config.edge.port, "/healthz") == 200
    processes = run.processes()

    run.supervisor.request_stop()
    assert await asyncio.wait_for(run.task, _DEADLINE_S) == 0

    assert read_events(events)[3:] == ["stop edge", "stop chat", "stop tool"]
    assert not await until_gone(processes)


@pytest.mark.parametrize("deploy", ["chat", "tool"])
async def test_skips_the_actor_not_deployed(tmp_path: Path, deploy: str) -> None:
    """With DEPLOY_MODELS=chat (or tool) only that actor starts."""
    events = tmp_path / "events"
    run = _start(tmp_path, events, DEPLOY_MODELS=deploy)
    await run.until_ready()
    run.supervisor.request_stop()
    assert await asyncio.wait_for(run.task, _DEADLINE_S) == 0
    assert read_events(events) == [f"start {deploy}", "start edge", "stop edge", f"stop {deploy}"]


@pytest.mark.parametrize("crasher", ["tool", "chat", "edge"])
async def test_a_service_exiting_stops_everything(tmp_path: Path, crasher: str) -> None:
    """When any service exits on its own, the rest are stopped and run() returns 1."""
    events = tmp_path / "events"
    run = _start(tmp_path, events, YAP_FAKE_CRASH=crasher)
    seen: set[ProcessId] = set()

    def collect() -> None:
        seen.update(run.processes())

    assert await _polling(run.task, collect) == 1
    assert f"stop {crasher}" not in read_events(events)
    assert not await until_gone(seen)


async def test_a_service_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    """A service that ignores SIGTERM is SIGKILLed after stop_timeout_s; others stop."""
    events = tmp_path / "events"
    run = _start(tmp_path, events, _fake_options(stop_timeout_s=0.5), YAP_FAKE_HANG="chat")
    await run.until_ready()
    processes = run.processes()
    run.supervisor.request_stop()
    assert await asyncio.wait_for(run.task, _DEADLINE_S) == 0
    assert read_events(events)[3:] == ["stop edge", "stop tool"]
    assert not await until_gone(processes)


async def test_stop_during_startup(tmp_path: Path) -> None:
    """A stop while an actor is still loading stops what started and returns 0."""
    events = tmp_path / "events"
    run = _start(tmp_path, events, YAP_FAKE_SILENT="tool")

    def tool_started() -> bool:
        return "start tool" in read_events(events)

    await _poll_until(tool_started)
    run.supervisor.request_stop()
    assert await asyncio.wait_for(run.task, _DEADLINE_S) == 0
    assert read_events(events) == ["start tool", "stop tool"]
    assert not run.ready.is_set()


async def _poll_until(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DEADLINE_S
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _polling(task: asyncio.Future[int], probe: Callable[[], None]) -> int:
    """Call ``probe`` until ``task`` finishes (to see processes that live briefly)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DEADLINE_S
    while not task.done():
        probe()
        assert loop.time() < deadline, "supervisor did not finish"
        await asyncio.sleep(0.01)
    return task.result()


# --- the CLI --------------------------------------------------------------------------


def _cli(
    *args: str, cwd: Path, env: Mapping[str, str], timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_PY, "-m", "launcher", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _cli_env(events: Path) -> dict[str, str]:
    return fake_env(os.environ, events)


def test_down_with_nothing_running(tmp_path: Path) -> None:
    """down without a pid file says nothing is running and succeeds."""
    result = _cli("down", cwd=tmp_path, env=_cli_env(tmp_path / "events"))
    assert result.returncode == 0, result.stderr
    assert "nothing is running" in result.stdout


def test_down_removes_a_stale_pid_file(tmp_path: Path) -> None:
    """A pid file naming a dead process is removed, not obeyed."""
    with subprocess.Popen([_PY, "-c", "pass"]) as dead:
        dead.wait()
    pid_file = tmp_path / ".yap" / "run" / "launcher.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{dead.pid}\n")
    result = _cli("down", cwd=tmp_path, env=_cli_env(tmp_path / "events"))
    assert result.returncode == 0, result.stderr
    assert "stale" in result.stdout
    assert not pid_file.exists()


def test_status_when_not_running(tmp_path: Path) -> None:
    """status exits 3 when no launcher runs."""
    result = _cli("status", cwd=tmp_path, env=_cli_env(tmp_path / "events"))
    assert result.returncode == 3
    assert "not running" in result.stdout


def _up_detached(
    tmp_path: Path, env: Mapping[str, str], edge_port: int
) -> subprocess.CompletedProcess[str]:
    return _cli(
        "up",
        "--detach",
        "--edge-port",
        str(edge_port),
        "--nats-port",
        "0",
        "--nats-monitor-port",
        "0",
        "--ready-timeout",
        str(_DEADLINE_S),
        "--actors-module",
        ACTORS_MODULE,
        "--edge-module",
        EDGE_MODULE,
        cwd=tmp_path,
        env=env,
    )


async def test_up_detached_then_down(tmp_path: Path) -> None:
    """up --detach returns when all is ready; down stops it and leaves no process."""
    env = _cli_env(tmp_path / "events")
    edge_port = free_port()
    result = _up_detached(tmp_path, env, edge_port)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ws://127.0.0.1:{edge_port}" in result.stdout

    pid_file = tmp_path / ".yap" / "run" / "launcher.pid"
    processes: set[ProcessId] = set()
    try:  # a failed check must not leave the detached system running
        launcher = process_id(int(pid_file.read_text()))
        assert launcher is not None
        processes = {launcher} | descendants(launcher[0])
        # nats-server, two actors, the edge, each with nothing below it.
        assert len(processes) == 5, processes
        assert await http_status("127.0.0.1", edge_port, "/healthz") == 200
        assert _cli("status", cwd=tmp_path, env=env).returncode == 0

        again = _up_detached(tmp_path, env, free_port())
        assert again.returncode == 1
        assert "already running" in again.stderr
    finally:
        down = _cli("down", cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr
    assert not await until_gone(processes)
    assert not pid_file.exists()
    log = (tmp_path / ".yap" / "run" / "up.log").read_text()
    assert "all services stopped" in log


def test_up_detached_reports_a_failed_start(tmp_path: Path) -> None:
    """up --detach fails with the log's tail when a service dies during startup."""
    env = _cli_env(tmp_path / "events") | {"YAP_FAKE_CRASH": "tool"}
    result = _up_detached(tmp_path, env, free_port())
    assert result.returncode == 1
    assert "FAILED" in result.stderr
    assert "tool actor exited unexpectedly" in result.stderr
    assert not (tmp_path / ".yap" / "run" / "launcher.pid").exists()
