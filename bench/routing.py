"""Routing benchmark: affine routing against the plain queue group, on the CPU engine.

``python -m bench.routing [--sessions 4] [--turns 4] [--tokens 16] [--history-lines 48]
[--think-ms 300] [--json out.json]``

Each mode (``edge.chat_routing`` = ``affine``, then ``queue``) is a whole deployment
run by the launcher library as ``just up`` runs it: chat only, two chat replicas of
the transformers engine on the tiny local model (``tiny-qwen2``, built on first
use), one edge. ``--sessions`` clients run at once, each ``--turns`` turns one after
the other with a server-kept history that grows by every exchange (seeded with
``--history-lines`` lines, so the prefix is worth caching), pausing ``--think-ms``
between turns: the user speaking. Replies are ``--tokens`` long (``ignore_eos``),
so both modes generate the same work.

Measured per mode, from the clients' frames: the warm-cache hit rate, cached
prompt tokens over prompt tokens (``usage.cached_tokens / usage.prompt_tokens`` of
each ``done``), over all turns and over the turns after a session's first (the ones
a session's own cache can serve); the share of those later turns whose prompt was
mostly cached; and first token (client sends ``start`` -> first token frame)
p50/p95. The chat actor prefills each session's next prompt after every reply on
the actor that served it: affine routing sends the next turn there, the queue group
to either replica. A next turn that reaches that actor while the prefill still runs
cancels it (only the chunks done by then are kept), so with no pause between turns
the session's own actor has little or nothing cached for it.

The load client and both replicas share this machine's cores: compare the modes of
one run only, and read the machine's load printed with them.
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
from typing import Any, Final, Literal

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from bench.overhead.cpu import cpu_model, machine_ticks
from bench.running import run_report
from clients.metrics import summarize
from configs.schema import Config
from launcher.net import free_port
from launcher.supervisor import Launcher, LaunchOptions

__all__ = ["ModeResult", "Settings", "main", "run"]

API_KEY: Final = "routing-bench"
MODEL: Final = "tiny-qwen2"
MODES: Final[tuple[Literal["affine", "queue"], ...]] = ("affine", "queue")
_TURN_TIMEOUT_S: Final = 120.0
_READY_TIMEOUT_S: Final = 300.0
# A turn counts as a warm hit when this share of its prompt came from the cache.
_HIT_SHARE: Final = 0.5


@dataclass(frozen=True, slots=True)
class Settings:
    sessions: int
    turns: int
    tokens: int
    history_lines: int
    think_s: float
    model_cache_dir: str


class ModeResult(msgspec.Struct, kw_only=True):
    mode: str
    turns: int
    errors: dict[str, int]
    prompt_tokens: int
    cached_tokens: int
    hit_rate: float  # cached / prompt tokens, all turns
    later_hit_rate: float  # the same, turns after each session's first
    later_warm_turns: float  # share of those turns with >= _HIT_SHARE of the prompt cached
    first_token_ms: dict[str, float | int] | None
    later_first_token_ms: dict[str, float | int] | None  # turns after each session's first
    wall_s: float
    machine_busy_pct: float  # all cores together, up to 100 x cores


@dataclass(frozen=True, slots=True)
class _Turn:
    index: int
    first_token_ms: float | None
    prompt_tokens: int
    cached_tokens: int
    outcome: str


def _config(workdir: Path, settings: Settings, mode: str) -> Config:
    data: dict[str, Any] = {
        "edge": {
            "port": free_port(),
            "api_key": API_KEY,
            "max_concurrent_connections": 256,
            "messages_per_minute": 0,
            "cancels_per_minute": 0,
            "chat_routing": mode,
        },
        "nats_server": {"port": 0, "monitor_port": 0, "store_dir": str(workdir / "nats")},
        "models": {"deploy": "chat"},
        "chat": {
            "backend": "transformers",
            "model": MODEL,
            "model_cache_dir": settings.model_cache_dir,
            "max_out": settings.tokens,
            "sampling": {"ignore_eos": True},
        },
        "actor": {"chat_replicas": 2, "chat_metrics_port": 0},
        "log": {"level": "WARNING", "format": "text"},
    }
    return msgspec.convert(data, Config)


def _launcher(workdir: Path, settings: Settings, mode: str) -> Launcher:
    options = LaunchOptions(
        work_dir=workdir,
        log_dir=workdir / "logs",
        actor_ready_timeout_s=_READY_TIMEOUT_S,
        edge_ready_timeout_s=_READY_TIMEOUT_S,
    )
    return Launcher(_config(workdir, settings, mode), os.environ, options)


def _seed_history(lines: int, session: int) -> str:
    """A canonical history (bus/history.py's lines), different per session."""
    return "\n".join(
        f"User: session {session} asks question {n} about the weather and the news"
        if n % 2 == 0
        else f"Assistant: here is answer {n} for session {session}, short and kind."
        for n in range(lines)
    )


def _start(session_id: str, index: int, history: str | None) -> str:
    message: dict[str, Any] = {
        "type": "start",
        "session_id": session_id,
        "user_utterance": f"tell me about thing number {index}",
        "server_history": True,
    }
    if history is not None:  # the first turn seeds the server-kept history
        message["assistant_gender"] = "female"
        message["history_text"] = history
    return json.dumps(message)


async def _turn(ws: ClientConnection, session_id: str, index: int, history: str | None) -> _Turn:
    sent = time.monotonic()
    await ws.send(_start(session_id, index, history))
    first_token: float | None = None
    code = "ok"
    async with asyncio.timeout(_TURN_TIMEOUT_S):
        while True:
            frame = json.loads(await ws.recv())
            kind = frame.get("type")
            if kind == "token" and first_token is None:
                first_token = (time.monotonic() - sent) * 1000.0
            elif kind == "error":
                code = str(frame.get("error_code"))
            elif kind == "done":
                usage = frame.get("usage") or {}
                return _Turn(
                    index,
                    first_token,
                    int(usage.get("prompt_tokens", 0)),
                    int(usage.get("cached_tokens", 0)),
                    code,
                )


async def _session(url: str, settings: Settings, number: int) -> list[_Turn]:
    session_id = f"bench-{number}-{uuid.uuid4().hex[:8]}"
    turns: list[_Turn] = []
    async with connect(url, proxy=None, compression=None) as ws:
        for index in range(settings.turns):
            if index and settings.think_s:
                await asyncio.sleep(settings.think_s)  # the user speaks: client pacing
            seed = _seed_history(settings.history_lines, number) if index == 0 else None
            turns.append(await _turn(ws, session_id, index, seed))
    return turns


def _rate(turns: Sequence[_Turn]) -> float:
    prompt = sum(t.prompt_tokens for t in turns)
    return round(sum(t.cached_tokens for t in turns) / prompt, 3) if prompt else 0.0


async def _measure(url: str, settings: Settings, mode: str) -> ModeResult:
    before, began = machine_ticks(), time.monotonic()
    per_session = await asyncio.gather(
        *(_session(url, settings, n) for n in range(settings.sessions))
    )
    wall_s, after = time.monotonic() - began, machine_ticks()
    turns = [t for session in per_session for t in session]
    ok = [t for t in turns if t.outcome == "ok"]
    later = [t for t in ok if t.index > 0]
    errors: dict[str, int] = {}
    for t in turns:
        if t.outcome != "ok":
            errors[t.outcome] = errors.get(t.outcome, 0) + 1
    warm = [t for t in later if t.prompt_tokens and t.cached_tokens >= _HIT_SHARE * t.prompt_tokens]
    summary = summarize([t.first_token_ms for t in ok if t.first_token_ms is not None])
    later_summary = summarize([t.first_token_ms for t in later if t.first_token_ms is not None])
    total = after[2] - before[2]
    cores = os.cpu_count() or 1
    return ModeResult(
        mode=mode,
        turns=len(ok),
        errors=errors,
        prompt_tokens=sum(t.prompt_tokens for t in ok),
        cached_tokens=sum(t.cached_tokens for t in ok),
        hit_rate=_rate(ok),
        later_hit_rate=_rate(later),
        later_warm_turns=round(len(warm) / len(later), 3) if later else 0.0,
        first_token_ms=None if summary is None else summary.as_dict(digits=1),
        later_first_token_ms=None if later_summary is None else later_summary.as_dict(digits=1),
        wall_s=round(wall_s, 2),
        machine_busy_pct=round(100.0 * cores * (after[0] - before[0]) / total, 1) if total else 0,
    )


async def run(settings: Settings, out: Any = sys.stdout) -> dict[str, Any]:
    report: dict[str, Any] = {
        "conditions": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "model": f"{MODEL} (transformers, CPU)",
            "chat_replicas": 2,
            "sessions": settings.sessions,
            "turns_per_session": settings.turns,
            "tokens_per_reply": settings.tokens,
            "history_lines": settings.history_lines,
            "think_ms": settings.think_s * 1000.0,
            "load_average_before": os.getloadavg(),
        },
        "modes": [],
    }
    conditions = report["conditions"]
    out.write(
        f"{conditions['cpu']}, {conditions['cores']} cores, load {os.getloadavg()[0]:.2f}; "
        f"{conditions['model']} x2; {settings.sessions} sessions x {settings.turns} turns "
        f"at once, {settings.tokens} tokens a reply, {settings.think_s * 1000:.0f} ms between\n"
    )
    out.write(f"{'mode':<8}{'turns':>6}{'hit all':>9}{'hit 2+':>8}{'warm 2+':>9}"
              f"{'TTFT p50':>10}{'p95':>9}{'2+ p50':>9}{'p95':>9}"
              f"{'busy':>7}  errors\n")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="yap-routing-") as tmp:
        for mode in MODES:
            workdir = Path(tmp) / mode
            async with _launcher(workdir, settings, mode) as launcher:
                host, port = launcher.edge_address()
                url = f"ws://{host}:{port}/ws?api_key={API_KEY}"
                result = await _measure(url, settings, mode)
            report["modes"].append(result)
            ttft = result.first_token_ms or {}
            later = result.later_first_token_ms or {}
            out.write(
                f"{mode:<8}{result.turns:>6}{result.hit_rate:>9.1%}{result.later_hit_rate:>8.1%}"
                f"{result.later_warm_turns:>9.0%}{ttft.get('p50', float('nan')):>8.1f}ms"
                f"{ttft.get('p95', float('nan')):>7.1f}ms{later.get('p50', float('nan')):>7.1f}ms"
                f"{later.get('p95', float('nan')):>7.1f}ms{result.machine_busy_pct:>6.0f}%"
                f"  {result.errors or '-'}\n"
            )
            out.flush()
    conditions["load_average_after"] = os.getloadavg()
    return report


def parse_args(argv: Sequence[str]) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per reply")
    parser.add_argument("--history-lines", type=int, default=48, help="seed history lines")
    parser.add_argument("--think-ms", type=float, default=300.0, help="pause between turns")
    parser.add_argument("--model-cache-dir", default="~/.cache/yap-bus")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    args = parser.parse_args(list(argv))
    if min(args.sessions, args.turns, args.tokens) < 1:
        parser.error("--sessions, --turns and --tokens must be positive")
    if min(args.history_lines, args.think_ms) < 0:
        parser.error("--history-lines and --think-ms must not be negative")
    settings = Settings(
        sessions=args.sessions,
        turns=args.turns,
        tokens=args.tokens,
        history_lines=args.history_lines,
        think_s=args.think_ms / 1000.0,
        model_cache_dir=args.model_cache_dir,
    )
    return settings, args


def main(argv: Sequence[str] | None = None) -> None:
    settings, args = parse_args(sys.argv[1:] if argv is None else argv)
    run_report(run(settings), args.json)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
