"""``python -m launcher up|down|status``: run the whole deployment on one machine.

``up`` runs nats-server, the actor replicas and the edge in the foreground until
Ctrl-C, restarting whatever crashes; ``up --detach`` runs the same in the background
and returns once everything is ready; ``down`` stops a launcher started either way.
This is the only module that reads the environment and the config file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final

import msgspec
import nats

from bus.loop import loop_factory
from configs.loader import ConfigError, load_config
from configs.schema import Config
from launcher.errors import AlreadyRunning, LauncherError, describe_exit
from launcher.net import connect_host, free_port
from launcher.plan import parse_replicas, with_cluster, with_replicas
from launcher.rundir import RunDir, launcher_alive, wait_exit
from launcher.status import (
    REPLAY_ACCESS_FILE,
    BusAccess,
    collect,
    read_access,
    read_services,
    render,
    render_services,
    write_access,
    write_services,
)
from launcher.supervisor import Launcher, LaunchOptions, Supervisor

__all__ = ["main"]

_DEFAULT_RUN_DIR: Final = ".yap/run"
_READY: Final = b"ready\n"
_LOG_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# How long a detached start waits for the background launcher to exit on failure.
_FAILED_EXIT_WAIT_S: Final = 60.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            return _detach(args) if args.detach else _up(args)
        if args.command == "down":
            return _down(args)
        return _status(args)
    except (ConfigError, LauncherError) as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launcher", description="Run a whole yap-bus deployment on one machine."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start nats-server, the actors and the edge")
    up.add_argument("--config", help="TOML config (default: the embedded configs/cpu.toml)")
    up.add_argument(
        "--detach", action="store_true", help="run in the background; return once all is ready"
    )
    up.add_argument("--edge-port", type=int, help="override edge.port (0: a free port)")
    up.add_argument("--nats-port", type=int, help="override nats_server.port (0: a free port)")
    up.add_argument(
        "--nats-monitor-port", type=int, help="override nats_server.monitor_port (0: a free port)"
    )
    up.add_argument(
        "--replicas",
        metavar="KIND=N[,KIND=N]",
        help="override actor.tool_replicas / actor.chat_replicas, e.g. chat=2,tool=1",
    )
    up.add_argument(
        "--edges", type=int, metavar="N", help="override edge.processes (edges on one port)"
    )
    up.add_argument(
        "--cluster",
        type=int,
        metavar="N",
        help="run N nats-server nodes as one cluster on this host (development)",
    )
    up.add_argument(
        "--no-nats",
        action="store_true",
        help="do not run nats-server; use the bus at bus.url as it is",
    )
    up.add_argument(
        "--ready-timeout",
        type=float,
        default=LaunchOptions.actor_ready_timeout_s,
        help="seconds one actor may take to get ready (default: %(default).0f)",
    )
    up.add_argument(
        "--stop-timeout",
        type=float,
        default=LaunchOptions.stop_timeout_s,
        help="seconds each service gets to stop before SIGKILL (default: %(default).0f)",
    )
    _add_run_dir(up)
    # For the detached re-exec and for tests; not for people.
    up.add_argument("--notify-fd", type=int, help=argparse.SUPPRESS)
    up.add_argument("--actors-module", default=LaunchOptions.actors_module, help=argparse.SUPPRESS)
    up.add_argument("--edge-module", default=LaunchOptions.edge_module, help=argparse.SUPPRESS)

    down = commands.add_parser("down", help="stop the launcher started by `up`")
    down.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="seconds to wait for an orderly stop before SIGKILL (default: %(default).0f)",
    )
    _add_run_dir(down)

    status = commands.add_parser(
        "status", help="say whether a launcher is running, and show its actors and edges"
    )
    status.add_argument("--once", action="store_true", help="print the table once and exit")
    _add_run_dir(status)
    return parser


def _add_run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        default=_DEFAULT_RUN_DIR,
        help="pid file and detached log directory (default: %(default)s)",
    )


# --- up ----------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> tuple[Config, dict[str, str]]:
    """The config with the CLI's overrides, and the environment children get.

    A port of 0 is resolved here, so that a detached launcher and the message that
    announces it agree on it. The edge port travels to the edge as YAP_EDGE_PORT.
    """
    env = dict(os.environ)
    config = load_config(args.config, env)
    if args.edge_port is not None:
        env["YAP_EDGE_PORT"] = str(args.edge_port or free_port(config.edge.host))
        config = load_config(args.config, env)
    server = config.nats_server
    if args.nats_port is not None:
        server = msgspec.structs.replace(server, port=args.nats_port or free_port(server.host))
    if args.nats_monitor_port is not None:
        server = msgspec.structs.replace(
            server, monitor_port=args.nats_monitor_port or free_port(server.host)
        )
    config = msgspec.structs.replace(config, nats_server=server)
    if args.replicas:
        config = with_replicas(config, parse_replicas(args.replicas))
    if args.edges is not None:
        if args.edges < 1:
            raise ConfigError("--edges must be at least 1")
        config = msgspec.structs.replace(
            config, edge=msgspec.structs.replace(config.edge, processes=args.edges)
        )
    if args.cluster is not None:
        config = with_cluster(config, args.cluster)
    return config, env


def _up(args: argparse.Namespace) -> int:
    config, env = _load(args)
    logging.basicConfig(level=config.log.level.upper(), format=_LOG_FORMAT)
    log = logging.getLogger("launcher")
    run_dir = RunDir(args.run_dir)
    pid = os.getpid()
    try:
        run_dir.claim(pid)
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return 1
    try:
        options = LaunchOptions(
            work_dir=run_dir.path,
            start_nats=not args.no_nats,
            actors_module=args.actors_module,
            edge_module=args.edge_module,
            actor_ready_timeout_s=args.ready_timeout,
            stop_timeout_s=args.stop_timeout,
        )
        notify = _ready_notifier(args.notify_fd, config, log)

        def on_ready(launcher: Launcher) -> None:
            write_access(run_dir.path, launcher.observer_access)
            write_access(run_dir.path, launcher.replay_access, REPLAY_ACCESS_FILE)
            notify()

        def on_change(launcher: Launcher) -> None:
            write_services(run_dir.path, launcher.status())

        supervisor = Supervisor(config, env, options, on_ready=on_ready, on_change=on_change)
        log.info("launcher pid %d, run dir %s", pid, run_dir.path)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(_serve(supervisor))
    finally:
        run_dir.release(pid)


async def _serve(supervisor: Supervisor) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop)
    try:
        return await supervisor.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _ready_notifier(
    notify_fd: int | None, config: Config, log: logging.Logger
) -> Callable[[], None]:
    def on_ready() -> None:
        log.info("yap-bus is up: ws://%s:%d", connect_host(config.edge.host), config.edge.port)
        if notify_fd is None:
            return
        # The detached parent may have been interrupted and gone; that is not fatal.
        try:
            os.write(notify_fd, _READY)
        except OSError as exc:
            log.warning("could not tell the starting process we are ready: %s", exc)
        finally:
            os.close(notify_fd)

    return on_ready


# --- up --detach ---------------------------------------------------------------------


def _detach(args: argparse.Namespace) -> int:
    config, _ = _load(args)  # fails here, in the terminal, on a bad config
    run_dir = RunDir(args.run_dir)
    running = run_dir.live_pid()
    if running is not None:
        print(f"launcher: {AlreadyRunning(running)}", file=sys.stderr)
        return 1
    run_dir.path.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "launcher", "up", *_forwarded(args, config)]
    argv += ["--notify-fd", str(write_fd)]
    with run_dir.log_path.open("ab") as log:
        log.write(f"--- launcher up --detach at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(write_fd,),
        )
    os.close(write_fd)
    print(f"starting yap-bus in the background (launcher pid {child.pid}, log {run_dir.log_path})")
    try:
        ready = _read_ready(read_fd)
    except KeyboardInterrupt:
        print("interrupted; stopping the background launcher", file=sys.stderr)
        child.terminate()
        child.wait()
        return 130
    finally:
        os.close(read_fd)
    if ready:
        host = connect_host(config.edge.host)
        print(f"yap-bus is up: ws://{host}:{config.edge.port} (stop it with `just down`)")
        return 0
    try:
        code = describe_exit(child.wait(timeout=_FAILED_EXIT_WAIT_S))
    except subprocess.TimeoutExpired:
        code = "still running"
    print(
        f"FAILED: yap-bus did not start (launcher {code}); last lines of {run_dir.log_path}:\n"
        f"{run_dir.log_tail()}",
        file=sys.stderr,
    )
    return 1


def _forwarded(args: argparse.Namespace, config: Config) -> list[str]:
    """The ``up`` arguments for the background launcher, ports already resolved."""
    forwarded = ["--run-dir", str(RunDir(args.run_dir).path)]
    if args.config is not None:
        forwarded += ["--config", args.config]
    if args.edge_port is not None:
        forwarded += ["--edge-port", str(config.edge.port)]
    if args.nats_port is not None:
        forwarded += ["--nats-port", str(config.nats_server.port)]
    if args.nats_monitor_port is not None:
        forwarded += ["--nats-monitor-port", str(config.nats_server.monitor_port)]
    if args.no_nats:
        forwarded.append("--no-nats")
    if args.replicas:
        forwarded += ["--replicas", args.replicas]
    if args.edges is not None:
        forwarded += ["--edges", str(args.edges)]
    if args.cluster is not None:
        forwarded += ["--cluster", str(args.cluster)]
    forwarded += ["--ready-timeout", str(args.ready_timeout)]
    forwarded += ["--stop-timeout", str(args.stop_timeout)]
    forwarded += ["--actors-module", args.actors_module, "--edge-module", args.edge_module]
    return forwarded


def _read_ready(fd: int) -> bool:
    """Block until the background launcher says ready (True) or closes the pipe (False)."""
    received = b""
    while chunk := os.read(fd, 64):
        received += chunk
        if _READY in received:
            return True
    return False


# --- down and status -----------------------------------------------------------------


def _down(args: argparse.Namespace) -> int:
    run_dir = RunDir(args.run_dir)
    pid = run_dir.read_pid()
    if pid is None:
        print("nothing is running")
        return 0
    if not launcher_alive(pid):
        run_dir.remove_pid_file()
        print(f"nothing is running (removed a stale pid file for pid {pid})")
        return 0
    print(f"stopping yap-bus (launcher pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_exit(pid, args.timeout):
        # Its children die with it (PR_SET_PDEATHSIG), so nothing is left behind.
        print(f"launcher did not stop within {args.timeout:.0f} s; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_exit(pid, 10.0)
    run_dir.release(pid)
    print("stopped")
    return 0


def _status(args: argparse.Namespace) -> int:
    run_dir = RunDir(args.run_dir)
    pid = run_dir.live_pid()
    if pid is None:
        print("not running")
        return 3  # the LSB code for "program is not running"
    print(f"running (launcher pid {pid}, log {run_dir.log_path})")
    services = read_services(run_dir.path)
    if services:
        print(render_services(services) + "\n")
    access = read_access(run_dir.path)
    if access is None:
        print("(no bus access file yet: the system is still starting)")
        return 0
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        # Live only on a terminal; a script or a pipe gets one table.
        return runner.run(_watch(access, once=args.once or not sys.stdout.isatty()))


async def _watch(access: BusAccess, *, once: bool) -> int:
    """Redraw the table every second until Ctrl-C (or once)."""
    tty = sys.stdout.isatty()
    while True:
        try:
            snapshot = await collect(access)
        except (OSError, nats.errors.Error) as exc:
            print(f"cannot reach the bus at {', '.join(access.urls)}: {exc!r}")
            return 1
        table = render(snapshot)
        print(("\x1b[H\x1b[2J" if tty and not once else "") + table, flush=True)
        if once:
            return 0


if __name__ == "__main__":
    sys.exit(main())
