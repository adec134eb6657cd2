"""Scale-out benchmark: chat replicas, one NATS node against a 3-node cluster, recovery.

``python -m bench.scaleout [--sessions 16] [--duration 10] [--rate 200] [--tokens 32]
[--json out.json]``

Each scenario is a whole deployment run by the launcher library, as ``just up``
runs it (locked-down bus, nats-server on free ports in a temp dir), with the
compute-free bench engine, so the figures are the system's, not a model's:

* ``replicas-1`` / ``replicas-2``: one NATS node, one or two chat replicas;
* ``cluster-1`` / ``cluster-2``: the same on a 3-node cluster, the edge on node 0
  and the actors on nodes 1 and 2, so every message crosses a route (the hop a
  cluster adds).

For each, ``--sessions`` connections run turns back to back for ``--duration``
seconds after a warm-up; measured: turns/s, and first token (client sends ``start``
-> first token frame) p50/p99. Then ``recovery``: one chat replica is SIGKILLed
and a client starts a turn every ``--probe-ms`` until one streams a token; the
time from the kill to that token is the time to the first turn served by the
restarted actor (the launcher's backoff, the edges' loss detection, the process
start and the engine's load, all included).

The load client runs in this process, on its own event loop; on a small machine
it competes with the system for CPU, so compare scenarios within one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.running import run_report
from clients.metrics import summarize
from configs.schema import Config
from launcher.net import free_port
from launcher.supervisor import Launcher, LaunchOptions

__all__ = ["Scenario", "ScenarioResult", "main", "run"]

API_KEY: Final = "scaleout-bench"
_TURN_TIMEOUT_S: Final = 30.0
_READY_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    chat_replicas: int
    nodes: int


SCENARIOS: Final = (
    Scenario("replicas-1", 1, 1),
    Scenario("replicas-2", 2, 1),
    Scenario("cluster-1", 1, 3),
    Scenario("cluster-2", 2, 3),
)


class ScenarioResult(msgspec.Struct, kw_only=True):
    name: str
    chat_replicas: int
    nodes: int
    sessions: int
    window_s: float
    turns: int
    turns_per_s: float
    errors: dict[str, int]
    first_token_ms: dict[str, float] | None


@dataclass(frozen=True, slots=True)
class Settings:
    sessions: int
    duration_s: float
    warmup_s: float
    rate: float
    tokens: int
    probe_ms: float
    scenarios: tuple[str, ...]
    recovery: bool


def _config(workdir: Path, settings: Settings, scenario: Scenario) -> Config:
    engine = {"backend": "bench", "model": "bench", "bench_tokens_per_s": settings.rate}
    data: dict[str, Any] = {
        "edge": {
            "port": free_port(),
            "api_key": API_KEY,
            "max_concurrent_connections": 4096,
            "messages_per_minute": 0,
            "cancels_per_minute": 0,
            "session_replicas": min(scenario.nodes, 3),
        },
        "nats_server": {
            "port": 0,
            "monitor_port": 0,
            "cluster_port": 0,
            "nodes": scenario.nodes,
            "store_dir": str(workdir / "nats"),
        },
        "models": {"deploy": "chat"},
        "chat": {**engine, "max_out": settings.tokens},
        "actor": {"chat_replicas": scenario.chat_replicas, "max_running": 4096},
        "log": {"level": "WARNING", "format": "text"},
    }
    return msgspec.convert(data, Config)


def _launcher(workdir: Path, settings: Settings, scenario: Scenario) -> Launcher:
    first_node: dict[str, int] = {}
    if scenario.nodes > 1:
        # Edge on node 0, actors on the others: every token crosses a route.
        first_node["edge-0"] = 0
        for index in range(scenario.chat_replicas):
            first_node[f"chat-{index}"] = 1 + index % (scenario.nodes - 1)
    options = LaunchOptions(
        work_dir=workdir,
        log_dir=workdir / "logs",
        actor_ready_timeout_s=_READY_TIMEOUT_S,
        edge_ready_timeout_s=_READY_TIMEOUT_S,
        first_node=first_node,
    )
    return Launcher(_config(workdir, settings, scenario), os.environ, options)


def _url(launcher: Launcher) -> str:
    host, port = launcher.edge_address()
    return f"ws://{host}:{port}/ws?api_key={API_KEY}"


def _start(session_id: str, first: bool) -> str:
    message: dict[str, Any] = {
        "type": "start",
        "session_id": session_id,
        "user_utterance": "tell me a story",
    }
    if first:
        message["assistant_gender"] = "female"
    return json.dumps(message)


async def _turn(ws: ClientConnection, session_id: str, first: bool) -> tuple[int | None, str]:
    """One turn: (ns to the first token or None, how it ended: "ok" or an error code)."""
    sent = time.monotonic_ns()
    await ws.send(_start(session_id, first))
    first_token: int | None = None
    async with asyncio.timeout(_TURN_TIMEOUT_S):
        while True:
            frame = json.loads(await ws.recv())
            kind = frame.get("type")
            if kind == "token" and first_token is None:
                first_token = time.monotonic_ns() - sent
            elif kind == "error":
                code = str(frame.get("error_code"))
                while json.loads(await ws.recv()).get("type") != "done":
                    pass
                return first_token, code
            elif kind == "done":
                return first_token, "ok"


async def _load(url: str, settings: Settings, scenario: Scenario) -> ScenarioResult:
    loop = asyncio.get_running_loop()
    begin = loop.time()
    start, end = begin + settings.warmup_s, begin + settings.warmup_s + settings.duration_s
    first_tokens: list[float] = []
    errors: dict[str, int] = {}
    turns = 0

    async def session() -> None:
        nonlocal turns
        session_id = uuid.uuid4().hex
        first = True
        async with connect(url, proxy=None, compression=None) as ws:
            while loop.time() < end:
                began = loop.time()
                try:
                    ttft, outcome = await _turn(ws, session_id, first)
                except (TimeoutError, ConnectionClosed) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                first = False
                if not start <= began < end:
                    continue
                if outcome != "ok":
                    errors[outcome] = errors.get(outcome, 0) + 1
                    continue
                turns += 1
                if ttft is not None:
                    first_tokens.append(ttft / 1e6)

    await asyncio.gather(*(session() for _ in range(settings.sessions)))
    summary = summarize(first_tokens)
    return ScenarioResult(
        name=scenario.name,
        chat_replicas=scenario.chat_replicas,
        nodes=scenario.nodes,
        sessions=settings.sessions,
        window_s=settings.duration_s,
        turns=turns,
        turns_per_s=round(turns / settings.duration_s, 2),
        errors=errors,
        first_token_ms=None if summary is None else summary.as_dict(digits=3),
    )


async def _recovery(launcher: Launcher, settings: Settings) -> dict[str, Any]:
    """SIGKILL chat-0 and time the first turn that streams a token again."""
    url = _url(launcher)
    session_id = uuid.uuid4().hex
    failures: dict[str, int] = {}
    async with connect(url, proxy=None, compression=None) as ws:
        ttft, outcome = await _turn(ws, session_id, True)
        assert outcome == "ok", f"the system did not serve before the kill: {outcome}"
        killed = time.monotonic()
        await launcher.services["chat-0"].kill()
        while True:
            ttft, outcome = await _turn(ws, session_id, False)
            if outcome == "ok" and ttft is not None:
                served = time.monotonic() - killed
                break
            failures[outcome] = failures.get(outcome, 0) + 1
            if time.monotonic() - killed > _READY_TIMEOUT_S:
                raise RuntimeError("the restarted actor never served a turn")
            await asyncio.sleep(settings.probe_ms / 1000.0)  # a client retrying, paced
    chat = launcher.services["chat-0"]
    return {
        "kill_to_first_token_s": round(served, 3),
        "failed_probes": failures,
        "restarts": chat.restarts,
        "backoff_initial_s": launcher.effective_config.launcher.backoff_initial_s,
        "actor_lost_after_s": launcher.effective_config.edge.actor_lost_after_s,
    }


async def run(settings: Settings, out: Any = sys.stdout) -> dict[str, Any]:
    report: dict[str, Any] = {
        "conditions": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "sessions": settings.sessions,
            "duration_s": settings.duration_s,
            "rate_per_session": settings.rate,
            "tokens_per_turn": settings.tokens,
        },
        "scenarios": [],
        "recovery": None,
    }
    out.write(f"{'scenario':<12}{'replicas':>9}{'nodes':>6}{'turns/s':>9}{'TTFT p50':>10}"
              f"{'p99':>8}  errors\n")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="yap-scaleout-") as tmp:
        for scenario in SCENARIOS:
            if scenario.name not in settings.scenarios:
                continue
            workdir = Path(tmp) / scenario.name
            async with _launcher(workdir, settings, scenario) as launcher:
                result = await _load(_url(launcher), settings, scenario)
                if settings.recovery and scenario.name == "replicas-1":
                    report["recovery"] = await _recovery(launcher, settings)
            report["scenarios"].append(result)
            ttft = result.first_token_ms or {}
            out.write(
                f"{result.name:<12}{result.chat_replicas:>9}{result.nodes:>6}"
                f"{result.turns_per_s:>9.1f}{ttft.get('p50', float('nan')):>8.2f}ms"
                f"{ttft.get('p99', float('nan')):>6.2f}ms  {result.errors or '-'}\n"
            )
            out.flush()
    recovery = report["recovery"]
    if recovery is not None:
        out.write(
            f"SIGKILL of chat-0 -> first token from its restarted self: "
            f"{recovery['kill_to_first_token_s']:.2f} s ({recovery['failed_probes']})\n"
        )
    return report


def parse_args(argv: Sequence[str]) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="measured s per scenario")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=200.0, help="tokens/s per session")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per turn")
    parser.add_argument("--probe-ms", type=float, default=20.0, help="recovery probe pace")
    parser.add_argument(
        "--scenarios",
        default=",".join(s.name for s in SCENARIOS),
        help="comma-separated subset of %(default)s",
    )
    parser.add_argument("--no-recovery", action="store_true", help="skip the SIGKILL timing")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    args = parser.parse_args(list(argv))
    names = tuple(n.strip() for n in args.scenarios.split(",") if n.strip())
    unknown = set(names) - {s.name for s in SCENARIOS}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.sessions < 1 or args.duration <= 0 or args.rate <= 0 or args.tokens < 1:
        parser.error("--sessions, --duration, --rate and --tokens must be positive")
    settings = Settings(
        sessions=args.sessions,
        duration_s=args.duration,
        warmup_s=args.warmup,
        rate=args.rate,
        tokens=args.tokens,
        probe_ms=args.probe_ms,
        scenarios=names,
        recovery=not args.no_recovery,
    )
    return settings, args


def main(argv: Sequence[str] | None = None) -> None:
    settings, args = parse_args(sys.argv[1:] if argv is None else argv)
    run_report(run(settings), args.json)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
