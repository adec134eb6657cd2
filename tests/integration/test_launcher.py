"""The launcher: child processes, the supervisor and the CLI, with fake actors and edge.

The fakes (``tests.support.fake_actor``, ``tests.support.fake_edge``) send ready
heartbeats and answer ``/healthz`` like the real services, so these tests cover
ordering, readiness, shutdown and "no orphans" without loading any model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from bus import subjects
from configs.loader import load_config
from configs.schema import Config
from launcher.errors import LauncherError
from launcher.net import http_status
from launcher.plan import PlanError, with_cluster
from launcher.preflight import PortInUse
from launcher.process import ChildProcess
from launcher.supervisor import Launcher, LaunchOptions, Supervisor
from tests.support.fakes import (
    ACTORS_MODULE,
    EDGE_MODULE,
    fake_env,
    read_env,
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


def _config(tmp_path: Path, env: Mapping[str, str], **sections: dict[str, Any]) -> Config:
    """The default config on free ports, with ``sections`` merged in."""
    config = load_config(None, env)
    data = msgspec.to_builtins(config)
    data["nats_server"].update(port=0, monitor_port=0, store_dir=str(tmp_path / "nats"))
    data["actor"].update(tool_metrics_port=0, chat_metrics_port=0)
    # Fast backoff: the tests wait for restarts, not for politeness.
    data["launcher"].update(backoff_initial_s=0.05, backoff_max_s=0.2)
    data["edge"].update(actor_lost_after_s=0.1)
    for section, values in sections.items():
        data[section].update(values)
    return msgspec.convert(data, Config)


def _fake_options(tmp_path: Path, **overrides: Any) -> LaunchOptions:
    return LaunchOptions(
        work_dir=tmp_path / "run",
        actors_module=ACTORS_MODULE,
        edge_module=EDGE_MODULE,
        actor_ready_timeout_s=_DEADLINE_S,
        edge_ready_timeout_s=_DEADLINE_S,
        seed=1,
        **overrides,
    )


class _Run:
    """A supervisor running as a task, with a way to wait until it is ready."""

    def __init__(self, config: Config, supervisor: Supervisor, ready: asyncio.Event) -> None:
        self.config = config
        self.supervisor = supervisor
        self.launcher = supervisor.launcher
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

    async def stop(self) -> int:
        self.supervisor.request_stop()
        return await asyncio.wait_for(self.task, _DEADLINE_S)


def _start(
    tmp_path: Path,
    events: Path,
    options: LaunchOptions | None = None,
    sections: Mapping[str, dict[str, Any]] | None = None,
    **env_extra: str,
) -> _Run:
    env = fake_env(os.environ, events, YAP_EDGE_PORT=str(free_port()), **env_extra)
    ready = asyncio.Event()
    config = _config(tmp_path, env, **(sections or {}))
    supervisor = Supervisor(
        config, env, options or _fake_options(tmp_path), on_ready=lambda _: ready.set()
    )
    return _Run(config, supervisor, ready)


async def _until(condition: Callable[[], bool], what: str = "condition") -> None:
    """Poll ``condition``: the states below change in other processes and tasks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DEADLINE_S
    while not condition():
        assert loop.time() < deadline, f"{what} not met in time"
        await asyncio.sleep(0.01)


async def test_starts_in_order_and_stops_in_reverse(tmp_path: Path) -> None:
    """Tool, chat, edge start one after another; a stop ends them edge, chat, tool."""
    events = tmp_path / "events"
    run = _start(tmp_path, events)
    await run.until_ready()
    assert read_events(events) == ["start tool-0", "start chat-0", "start edge-0"]
    assert set(run.supervisor.pids) == {"nats-server", "tool-0", "chat-0", "edge-0"}
    assert await http_status(run.config.edge.host, run.config.edge.port, "/healthz") == 200
    processes = run.processes()

    assert await run.stop() == 0

    assert read_events(events)[3:] == ["stop edge-0", "stop chat-0", "stop tool-0"]
    assert not await until_gone(processes)


async def test_replicas_start_one_after_the_other_with_their_slots(tmp_path: Path) -> None:
    """chat=3 starts chat-0, chat-1, chat-2 in order, each with its GPU, its share of
    it and its own metrics port; two edges are edge-0 and edge-1 on one port."""
    events = tmp_path / "events"
    run = _start(
        tmp_path,
        events,
        sections={
            "actor": {
                "chat_replicas": 3,
                "chat_gpus": ["0", "0", "1"],
                "chat_gpu_fracs": [0.45, 0.45, 0.9],
                "chat_metrics_port": 0,
            },
            "edge": {"processes": 2},
        },
    )
    await run.until_ready()
    try:
        assert read_events(events) == [
            "start tool-0",
            "start chat-0",
            "start chat-1",
            "start chat-2",
            "start edge-0",
            "start edge-1",
        ]
        chat2 = read_env(events, "chat-2")
        assert chat2["YAP_ACTOR_ID"] == "chat-2"
        assert chat2["CUDA_VISIBLE_DEVICES"] == "1"
        assert chat2["CHAT_GPU_FRAC"] == "0.9"
        assert read_env(events, "chat-0")["CUDA_VISIBLE_DEVICES"] == "0"
        assert read_env(events, "edge-1")["YAP_EDGE_ID"] == "edge-1"
        # Per-process bus credentials, by role until permissions are per id.
        # One bus user per process id.
        assert read_env(events, "edge-1")["YAP_BUS_USER"] == "edge-1"
        assert read_env(events, "chat-1")["YAP_BUS_USER"] == "chat-1"
        assert "CUDA_VISIBLE_DEVICES" not in read_env(events, "tool-0")
    finally:
        assert await run.stop() == 0


@pytest.mark.parametrize("deploy", ["chat", "tool"])
async def test_skips_the_actor_not_deployed(tmp_path: Path, deploy: str) -> None:
    """With DEPLOY_MODELS=chat (or tool) only that actor starts."""
    events = tmp_path / "events"
    run = _start(tmp_path, events, DEPLOY_MODELS=deploy)
    await run.until_ready()
    assert await run.stop() == 0
    assert read_events(events) == [
        f"start {deploy}-0",
        "start edge-0",
        "stop edge-0",
        f"stop {deploy}-0",
    ]


@pytest.mark.parametrize("crasher", ["tool-0", "chat-0", "edge-0"])
async def test_a_start_failure_stops_everything_without_retrying(
    tmp_path: Path, crasher: str
) -> None:
    """A service that dies during the first start is a start failure: the rest are
    stopped, run() returns 1, and it is never started again."""
    events = tmp_path / "events"
    run = _start(tmp_path, events, YAP_FAKE_RUNS=f"{crasher}=die")
    seen: set[ProcessId] = set()

    def collect() -> None:
        seen.update(run.processes())

    assert await _polling(run.task, collect) == 1
    assert read_events(events).count(f"start {crasher}") == 1
    assert f"stop {crasher}" not in read_events(events)
    assert not await until_gone(seen)


async def test_a_crashed_actor_is_restarted_and_the_rest_keep_serving(tmp_path: Path) -> None:
    """SIGKILL of a ready chat actor restarts it in its slot; a death while it starts
    again is one more crash; the other services keep their processes throughout, and
    the restarts show in the status and in the Prometheus counter."""
    events = tmp_path / "events"
    metrics_port = free_port()
    run = _start(
        tmp_path,
        events,
        sections={"launcher": {"metrics_port": metrics_port}},
        YAP_FAKE_RUNS="chat-0=ready,die,ready",
    )
    await run.until_ready()
    try:
        before = dict(run.supervisor.pids)
        chat = run.launcher.services["chat-0"]
        await chat.kill()
        await _until(lambda: chat.state == "ready" and chat.restarts == 2, "chat-0 back")
        assert read_events(events).count("start chat-0") == 3
        after = run.supervisor.pids
        assert after["chat-0"] != before["chat-0"]
        assert {k: v for k, v in after.items() if k != "chat-0"} == {
            k: v for k, v in before.items() if k != "chat-0"
        }
        status = {s.name: s for s in run.launcher.status()}
        assert status["chat-0"].restarts == 2 and status["chat-0"].last_exit == "code 3"
        assert status["tool-0"].restarts == 0 and status["tool-0"].state == "ready"
        scrape = await _http_get("127.0.0.1", metrics_port, "/metrics")
        assert 'yap_launcher_restarts_total{reason="killed by SIGKILL",service="chat-0"} 1.0' in (
            scrape
        )
        assert 'yap_launcher_restarts_total{reason="code 3",service="chat-0"} 1.0' in scrape
        assert not run.task.done()
    finally:
        assert await run.stop() == 0


def _config_read_by(events: Path, name: str) -> dict[str, Any]:
    """The TOML a fake slot was given as ``--config`` at its last start."""
    return tomllib.loads(Path(read_env(events, name)["--config"]).read_text())


async def test_slots_with_own_configs_started_stopped_and_restarted_on_request(
    tmp_path: Path,
) -> None:
    """edge-1 reads its own config (its port, concurrent mode); deferred chat-1 starts
    only when asked and stop_slot leaves it stopped; restart_slot runs chat-0 on a new
    model while the others keep their processes, and supervises it as before."""
    events = tmp_path / "events"
    port0, port1 = free_port(), free_port()
    env = fake_env(os.environ, events, YAP_EDGE_PORT=str(port0))
    config = _config(tmp_path, env, actor={"chat_replicas": 2}, edge={"processes": 2})
    edge1 = {"edge": {"port": port1}, "models": {"concurrent_model_call": True}}
    options = _fake_options(tmp_path, deferred=frozenset({"chat-1"}), overrides={"edge-1": edge1})
    async with Launcher(config, env, options) as launcher:
        assert read_events(events) == [
            "start tool-0",
            "start chat-0",
            "start edge-0",
            "start edge-1",
        ]
        assert launcher.services["chat-1"].state == "pending"
        assert launcher.edge_address(1)[1] == port1 != launcher.edge_address(0)[1]
        assert await http_status("127.0.0.1", port1, "/healthz") == 200
        own = _config_read_by(events, "edge-1")
        assert own["models"]["concurrent_model_call"] is True and own["edge"]["port"] == port1
        assert read_env(events, "edge-0")["--config"] == str(launcher.config_path)
        assert read_env(events, "edge-1")["YAP_BUS_USER"] == "edge-1"

        await launcher.start_slot("chat-1")
        assert read_events(events)[-1] == "start chat-1"
        assert launcher.services["chat-1"].state == "ready"
        with pytest.raises(LauncherError, match="running already"):
            await launcher.start_slot("chat-1")
        await launcher.stop_slot("chat-1")
        assert read_events(events)[-1] == "stop chat-1"

        before = dict(launcher.pids)
        with pytest.raises(PlanError, match="actor"):
            await launcher.restart_slot("chat-0", {"actor": {"chat_replicas": 1}})
        assert launcher.pids == before  # refused before anything stopped
        await launcher.restart_slot("chat-0", {"chat": {"model": "another-model"}})
        after = launcher.pids
        assert after["chat-0"] != before["chat-0"]
        assert {k: after[k] for k in ("tool-0", "edge-0", "edge-1")} == {
            k: before[k] for k in ("tool-0", "edge-0", "edge-1")
        }
        chat0 = _config_read_by(events, "chat-0")
        assert chat0["chat"]["model"] == "another-model"
        assert launcher.slot_config("chat-0").chat.model == "another-model"
        assert launcher.services["chat-0"].restarts == 0  # asked for, not a crash

        chat = launcher.services["chat-0"]
        await chat.kill()
        await _until(lambda: chat.state == "ready" and chat.restarts == 1, "chat-0 back")
        # Time has passed for a restart of chat-1 too; none came.
        assert launcher.services["chat-1"].state == "stopped"
        assert read_events(events).count("start chat-1") == 1


async def test_gives_up_after_max_crashes_in_the_window(tmp_path: Path) -> None:
    """An actor that crashes again after every restart is given up on at the K-th
    crash: everything stops in order and run() returns 3."""
    events = tmp_path / "events"
    run = _start(
        tmp_path,
        events,
        sections={"launcher": {"max_crashes": 3}},
        YAP_FAKE_RUNS="tool-0=ready,crash,crash,crash,crash",
    )
    await run.until_ready()
    processes = run.processes()
    await run.launcher.services["tool-0"].kill()
    assert await asyncio.wait_for(run.task, _DEADLINE_S) == 3
    # The first run, then two restarts: the third crash gives up.
    assert read_events(events).count("start tool-0") == 3
    assert read_events(events)[-2:] == ["stop edge-0", "stop chat-0"]
    assert "tool-0 crashed 3 times within 60 s" in (run.launcher.failure or "")
    assert not await until_gone(processes)


async def test_nats_server_restarts_on_its_port_and_data_dir(tmp_path: Path) -> None:
    """A killed nats-server comes back on the same port with its JetStream data; the
    actors stay up."""
    events = tmp_path / "events"
    run = _start(tmp_path, events, _fake_options(tmp_path, start_nats=True))
    await run.until_ready()
    try:
        node = run.launcher.services["nats-server"]
        url = run.launcher.bus_urls[0]
        edge = run.launcher.credentials("edge-0")
        assert edge is not None
        inbox = subjects.inbox_prefix("edge-0")  # the edge's user reads only its own inbox
        client = await nats.connect(url, user=edge.user, password=edge.password, inbox_prefix=inbox)
        try:
            kv = await client.jetstream().create_key_value(bucket="yap_sessions")
            await kv.put("s1", b"kept")
        finally:
            await client.close()
        actor_pid = run.supervisor.pids["chat-0"]
        await node.kill()
        await _until(lambda: node.state == "ready" and node.restarts == 1, "nats back")
        assert run.launcher.bus_urls[0] == url
        client = await nats.connect(url, user=edge.user, password=edge.password, inbox_prefix=inbox)
        try:
            kv = await client.jetstream().key_value("yap_sessions")
            assert (await kv.get("s1")).value == b"kept"
        finally:
            await client.close()
        assert run.supervisor.pids["chat-0"] == actor_pid
    finally:
        assert await run.stop() == 0


async def test_secrets_at_rest_are_private(tmp_path: Path) -> None:
    """The generated nats-server.conf (every role's password) is 0600 in a 0700
    directory, the run's config 0600, and no password is in the config children read."""
    events = tmp_path / "events"
    run = _start(tmp_path, events)
    await run.until_ready()
    try:
        conf = tmp_path / "nats" / "nats-server.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        assert stat.S_IMODE(conf.parent.stat().st_mode) == 0o700
        config_path = run.launcher.config_path
        assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
        actor = run.launcher.credentials("chat-0")
        assert actor is not None and actor.password in conf.read_text()
        assert actor.password not in config_path.read_text()
    finally:
        assert await run.stop() == 0


async def test_a_taken_port_refuses_before_anything_starts(tmp_path: Path) -> None:
    """With the edge port taken, nothing starts and the error names the port, its
    holder and the setting that moves it."""
    events = tmp_path / "events"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = fake_env(os.environ, events, YAP_EDGE_PORT=str(port))
        launcher = Launcher(_config(tmp_path, env), env, _fake_options(tmp_path))
        with pytest.raises(PortInUse) as refused:
            async with launcher:
                pass
    message = str(refused.value)
    assert f"port {port} on 127.0.0.1 (edge)" in message
    assert f"pid {os.getpid()}" in message
    assert "edge.port, --edge-port" in message
    assert "\n" not in message
    assert read_events(events) == []
    assert not (tmp_path / "nats" / "nats-server.conf").exists()


async def test_a_service_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    """A service that ignores SIGTERM is SIGKILLed after stop_timeout_s; others stop."""
    events = tmp_path / "events"
    options = _fake_options(tmp_path, stop_timeout_s=0.5)
    run = _start(tmp_path, events, options, YAP_FAKE_HANG="chat")
    await run.until_ready()
    processes = run.processes()
    assert await run.stop() == 0
    assert read_events(events)[3:] == ["stop edge-0", "stop tool-0"]
    assert not await until_gone(processes)


async def test_stop_during_startup(tmp_path: Path) -> None:
    """A stop while an actor is still loading stops what started and returns 0."""
    events = tmp_path / "events"
    run = _start(tmp_path, events, YAP_FAKE_SILENT="tool")

    await _until(lambda: "start tool-0" in read_events(events), "tool started")
    assert await run.stop() == 0
    assert read_events(events) == ["start tool-0", "stop tool-0"]
    assert not run.ready.is_set()


async def test_three_node_cluster_survives_a_node(tmp_path: Path) -> None:
    """--cluster 3: three nodes route to each other; a killed node is restarted
    and rejoins, and a message still crosses the cluster meanwhile."""
    events = tmp_path / "events"
    env = fake_env(os.environ, events, YAP_EDGE_PORT=str(free_port()))
    # Port 0 everywhere: each node gets free ports of its own, routes included.
    config = with_cluster(_config(tmp_path, env, nats_server={"cluster_port": 0}), 3)
    ready = asyncio.Event()
    supervisor = Supervisor(config, env, _fake_options(tmp_path), on_ready=lambda _: ready.set())
    run = _Run(config, supervisor, ready)
    await run.until_ready()
    try:
        launcher = run.launcher
        assert [s.name for s in launcher.status()][:3] == ["nats-0", "nats-1", "nats-2"]
        assert len(launcher.bus_urls) == 3
        assert launcher.effective_config.edge.session_replicas == 3
        edge = launcher.credentials("edge-0")
        assert edge is not None
        urls = list(launcher.bus_urls)
        moved = asyncio.Event()

        async def on_reconnect() -> None:
            moved.set()

        # On node 0 first (no shuffling), failing over to the others when it dies.
        first = await nats.connect(
            servers=urls,
            user=edge.user,
            password=edge.password,
            dont_randomize=True,
            reconnect_time_wait=0.05,
            reconnected_cb=on_reconnect,
        )
        actor = launcher.credentials("chat-0")
        assert actor is not None
        second = await nats.connect(urls[2], user=actor.user, password=actor.password)
        try:
            assert first.connected_url is not None and first.connected_url.port == int(
                urls[0].rsplit(":", 1)[1]
            )
            subject = subjects.cancel("s1")
            sub = await second.subscribe(subject)
            await second.flush()
            node = launcher.services["nats-0"]
            await node.kill()
            async with asyncio.timeout(_DEADLINE_S):
                await moved.wait()
            await first.publish(subject, b"across")
            assert (await sub.next_msg(timeout=5)).data == b"across"
            await _until(lambda: node.state == "ready" and node.restarts == 1, "node back")
        finally:
            await first.close()
            await second.close()
    finally:
        assert await run.stop() == 0


async def _http_get(host: str, port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(_DEADLINE_S):
            return (await reader.read()).decode()
    finally:
        writer.close()


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

        # A crash shows in `just status`: the slot, its restarts and how it ended.
        services = tmp_path / ".yap" / "run" / "services.json"
        chat_pid = next(s["pid"] for s in json.loads(services.read_text()) if s["name"] == "chat-0")
        os.kill(chat_pid, signal.SIGKILL)

        def restarted() -> bool:
            rows = {s["name"]: s for s in json.loads(services.read_text())}
            return rows["chat-0"]["restarts"] == 1 and rows["chat-0"]["state"] == "ready"

        await _until(restarted, "chat-0 restarted")
        table = _cli("status", "--once", cwd=tmp_path, env=env).stdout
        row = next(line for line in table.splitlines() if line.startswith("chat-0"))
        assert row.split()[1:2] == ["ready"] and row.split()[3] == "1", table
        assert "killed by SIGKILL" in row, table
        processes |= descendants(launcher[0])

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
    assert "tool-0 exited unexpectedly (code 3)" in result.stderr
    assert not (tmp_path / ".yap" / "run" / "launcher.pid").exists()


def test_up_refuses_a_taken_port_in_one_line(tmp_path: Path) -> None:
    """up with the nats port taken starts nothing and says so in one line naming
    the port, its holder and the flag that moves it."""
    env = _cli_env(tmp_path / "events")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _cli(
            "up",
            "--edge-port",
            str(free_port()),
            "--nats-port",
            str(port),
            "--nats-monitor-port",
            "0",
            "--actors-module",
            ACTORS_MODULE,
            "--edge-module",
            EDGE_MODULE,
            cwd=tmp_path,
            env=env,
        )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert f"port {port} on 127.0.0.1 (nats-server clients) is already in use by pid" in (errors[0])
    assert "--nats-port" in errors[0]
    assert "starting" not in result.stderr and "Traceback" not in result.stderr
    assert read_events(tmp_path / "events") == []
