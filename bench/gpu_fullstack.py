"""The full stack on a GPU: WebSocket client -> edge -> NATS -> actors -> vLLM.

The same workload as ``bench/gpu_raw.py`` (persona ~900 tokens shared and warmed
once, history ~1500 tokens per session, ~30-token utterance, 200 tokens out; N
sessions start each turn at once, three turns, the next one ``--think-s`` after the
last reply), sent as the protocol's own messages. Each session's history is built
the way our clients build it (``bus.history``: this history, the utterance, the
reply the client received), so the chat actor's next-turn warming can hit. Times are
measured by the client, from sending ``start``.

With ``--start-system CONFIG`` it starts the system itself, so that both modes run
against one set of actors (one engine start): nats-server, the tool actor, then the
chat actor (one after the other, as their GPU memory profiling needs), and two edges
on the same bus, one sequential and one concurrent (``concurrent_model_call``).
``--extra-chat-model`` then restarts the chat actor alone with another model (the
Mistral-Nemo-12B shape, say) and runs ``--extra-sessions`` in both modes. Without
it, it drives a running system at ``--url``.

    python -m bench.gpu_fullstack --start-system configs/gpu.toml --sessions 1,16 \\
        --tokenizer-of random:llama-3.1-8b --out fullstack.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import sys
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nats

from bench.gpu_raw import (
    PERSONA_LEAD,
    UTTERANCE_LEAD,
    Workload,
    history_of,
    int_list,
    summary_ms,
    text_of_tokens,
)
from bus import subjects
from bus.codec import BusDecodeError, Codec
from bus.history import append_turn
from clients.turn import FrameStream, TurnResult, open_stream, run_turn

__all__ = ["main"]

MODES = ("sequential", "concurrent")
# How long an actor may take to come up: a vLLM engine compiles and captures graphs.
ACTOR_READY_S = 420.0
EDGE_READY_S = 60.0


def _start(session_id: str, persona: str, history: str, utterance: str) -> dict[str, Any]:
    return {
        "type": "start",
        "session_id": session_id,
        "assistant_gender": "female",
        "persona_style": "wholesome",
        "persona_text": persona,
        "history_text": history,
        "user_utterance": utterance,
    }


def _timings(result: TurnResult) -> dict[str, float | None]:
    """Seconds from ``start`` to the decision, first token, first sentence; per token."""
    metrics = result.metrics()
    tokens = [f.at for f in result.frames if f.type == "token"]
    usage = result.usage or {}
    completion = int(usage.get("completion_tokens", 0))
    per_token = None
    if len(tokens) >= 2 and completion >= 2:
        per_token = (tokens[-1] - tokens[0]) / (completion - 1)
    sec = lambda ms: None if ms is None else ms / 1000  # noqa: E731
    return {
        "tool": sec(metrics.ttfb_toolcall_ms),
        "ttft": sec(metrics.ttfb_chat_ms),
        "first_sentence": sec(metrics.time_to_first_complete_sentence_ms),
        "per_token": per_token,
        "cached": float(usage.get("cached_tokens", 0)),
        "prompt": float(usage.get("prompt_tokens", 0)),
    }


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


async def scenario(
    url: str,
    api_key: str,
    tokenizer: Any,
    persona: str,
    sessions: int,
    workload: Workload,
    name: str,
) -> list[dict[str, Any]]:
    """N sessions, ``workload.turns`` turns each, every turn started by all at once."""
    rngs = [random.Random(f"{name}/{i}") for i in range(sessions)]
    histories = [history_of(tokenizer, rng, workload.history_tokens) for rng in rngs]
    ids = [f"gpu-{i}-{uuid.uuid4().hex[:8]}" for i in range(sessions)]
    rows = []
    async with contextlib.AsyncExitStack() as connections:
        streams: list[FrameStream] = list(
            await asyncio.gather(
                *(connections.enter_async_context(open_stream(url, api_key)) for _ in ids)
            )
        )
        for turn in range(1, workload.turns + 1):
            if turn > 1:
                await asyncio.sleep(workload.think_s)  # the users speak; the actor warms
            utterances = [
                text_of_tokens(tokenizer, rng, workload.utterance_tokens, UTTERANCE_LEAD)
                for rng in rngs
            ]
            results = await asyncio.gather(
                *(
                    run_turn(
                        stream,
                        _start(ids[i], persona, histories[i], utterances[i]),
                        recv_timeout_s=120,
                    )
                    for i, stream in enumerate(streams)
                )
            )
            timings = [_timings(r) for r in results if r.ok]
            row: dict[str, Any] = {
                "sessions": sessions,
                "turn": turn,
                "ok": len(timings),
                "failed": [r.error_codes for r in results if not r.ok][:3],
            }
            for key in ("tool", "ttft", "first_sentence", "per_token"):
                row[key] = summary_ms([t[key] for t in timings if t[key] is not None])
            row["cached_tokens_p50"] = _median([t["cached"] for t in timings])
            row["prompt_tokens_p50"] = _median([t["prompt"] for t in timings])
            rows.append(row)
            for i, result in enumerate(results):
                # What the client was sent is what it appends (bus.history).
                histories[i] = append_turn(histories[i], utterances[i], result.text)
    return rows


async def warm_persona(url: str, api_key: str, persona: str) -> None:
    """Warm the shared persona once, as a deployment's sessions do before speaking."""
    async with open_stream(url, api_key) as stream:
        await stream.send({"type": "warm_persona", "persona_text": persona})
        async with asyncio.timeout(120):
            while (await stream.receive(120)).type != "warmed":
                pass


# -- running the system ------------------------------------------------------------------


@dataclasses.dataclass
class SystemPlan:
    """What ``--start-system`` runs: one config, and each process's environment."""

    config: Path
    workdir: Path
    tool_model: str | None
    chat_model: str | None
    python: str = sys.executable


def write_config(base: Path, out: Path, overrides: Mapping[str, Mapping[str, Any]]) -> Path:
    """``base`` with ``overrides`` merged in, section by section, written as TOML."""
    data = tomllib.loads(base.read_text())
    for section, values in overrides.items():
        node = data
        for part in section.split("."):
            node = node.setdefault(part, {})
        node.update(values)
    out.write_text(_toml(data))
    return out


def _toml(data: Mapping[str, Any], prefix: str = "") -> str:
    plain = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    lines = [f"[{prefix}]"] if prefix and plain else []
    lines += [f"{key} = {json.dumps(value)}" for key, value in plain.items()]
    text = "\n".join(lines) + ("\n\n" if lines else "")
    for key, table in tables.items():
        text += _toml(table, f"{prefix}.{key}" if prefix else key)
    return text


class Heartbeats:
    """Who is ready on the bus, from the actors' heartbeats."""

    def __init__(self) -> None:
        self._codec = Codec()
        self.ready: dict[str, str] = {}  # actor id -> kind
        self._changed = asyncio.Event()

    async def on_message(self, msg: Any) -> None:
        try:
            beat = self._codec.decode_heartbeat(msg.data)
        except BusDecodeError:
            return
        if beat.ready and not beat.draining:
            self.ready[beat.actor_id] = beat.kind
        else:
            self.ready.pop(beat.actor_id, None)
        self._changed.set()

    async def wait_new(self, kind: str, known: set[str], within: float) -> str:
        """The id of an actor of ``kind`` that is ready and not in ``known``."""
        async with asyncio.timeout(within):
            while True:
                fresh = [a for a, k in self.ready.items() if k == kind and a not in known]
                if fresh:
                    return fresh[0]
                self._changed.clear()
                await self._changed.wait()


class System:
    """nats-server, a tool actor, a chat actor and one edge per mode, as processes."""

    def __init__(self, plan: SystemPlan, stack: contextlib.AsyncExitStack) -> None:
        self.plan = plan
        self._stack = stack
        self.urls: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self.chat: Any = None
        self.beats = Heartbeats()
        self._known: set[str] = set()
        self._children: dict[str, Any] = {}
        self._starts = 0

    async def start(self) -> None:
        from launcher.nats import NatsServer
        from launcher.net import free_port

        plan = self.plan
        server = await self._stack.enter_async_context(NatsServer(plan.workdir / "nats"))
        self.env = {
            **os.environ,
            "YAP_NATS_URL": server.url,
            # Every session of the largest scenario on one edge.
            "MAX_CONCURRENT_CONNECTIONS": "256",
            "PYTHONUNBUFFERED": "1",
        }
        if plan.tool_model:
            self.env["TOOL_MODEL"] = plan.tool_model
        if plan.chat_model:
            self.env["CHAT_MODEL"] = plan.chat_model
        nc = await nats.connect(server.url)
        self._stack.push_async_callback(nc.close)
        await nc.subscribe(subjects.ALL_HEARTBEATS, cb=self.beats.on_message)
        began = time.perf_counter()
        await self._start_actor("tool", self.env)
        print(f"# tool actor ready in {time.perf_counter() - began:.1f} s", flush=True)
        began = time.perf_counter()
        self.chat = await self._start_actor("chat", self.env)
        print(f"# chat actor ready in {time.perf_counter() - began:.1f} s", flush=True)
        for index, mode in enumerate(MODES):
            port = free_port()
            env = {
                **self.env,
                # Distinct edge ids: each edge hears its own sessions' outbound events.
                "YAP_EDGE_ID": f"edge-{index}",
                "YAP_EDGE_PORT": str(port),
                "CONCURRENT_MODEL_CALL": "1" if mode == "concurrent" else "0",
            }
            await self._child(f"edge-{mode}", ["edge"], env)
            await _until_healthy("127.0.0.1", port)
            self.urls[mode] = f"ws://127.0.0.1:{port}/ws"

    def pids(self) -> dict[str, int]:
        """The actors' and edges' process ids, by name."""
        return {name: child.pid for name, child in self._children.items() if child.running}

    async def replace_chat(self, model: str) -> None:
        """Stop the chat actor and start one on ``model``; the edges stay."""
        await self.chat.stop()
        began = time.perf_counter()
        self.chat = await self._start_actor("chat", {**self.env, "CHAT_MODEL": model})
        print(f"# chat actor on {model} ready in {time.perf_counter() - began:.1f} s", flush=True)

    async def _start_actor(self, kind: str, env: Mapping[str, str]) -> Any:
        """Start an actor and wait for its ready heartbeat, or fail at once if it exits."""
        # A fresh id per start (the launcher's slot names): a restarted chat actor is
        # told from the one it replaces.
        self._starts += 1
        env = {**env, "YAP_ACTOR_ID": f"{kind}-{self._starts}"}
        child = await self._child(f"{kind}-actor", ["actors", kind], env)
        ready = asyncio.ensure_future(self.beats.wait_new(kind, self._known, ACTOR_READY_S))
        exited = asyncio.ensure_future(child.wait())
        try:
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if not ready.done():
            ready.cancel()
            raise RuntimeError(f"the {kind} actor exited with {child.returncode} before ready")
        self._known.add(ready.result())
        return child

    async def _child(self, name: str, module: list[str], env: Mapping[str, str]) -> Any:
        from launcher.process import ChildProcess

        log = (self.plan.workdir / f"{name}-{time.monotonic_ns()}.log").open("wb")
        self._stack.callback(log.close)
        argv = [self.plan.python, "-m", *module, "--config", str(self.plan.config)]
        child = ChildProcess(name, argv, env=env, stdout=log, stderr=log, stop_timeout_s=30)
        await child.start()
        self._stack.push_async_callback(child.stop)
        self._children[name] = child
        return child


async def _until_healthy(host: str, port: int) -> None:
    from launcher.net import http_status

    # Polled: an HTTP endpoint has nothing to wait on; bounded by the timeout.
    async with asyncio.timeout(EDGE_READY_S):
        while True:
            if await http_status(host, port, "/healthz") == 200:
                return
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_system(args: argparse.Namespace) -> AsyncIterator[System]:
    workdir = Path(args.workdir)  # made by main()
    overrides: dict[str, dict[str, Any]] = {
        # Like bench.gpu_raw, every reply runs its full length whatever random
        # weights sample.
        "chat.sampling": {"ignore_eos": True},
        # Free ports on a shared host: no fixed metrics ports.
        "actor": {"tool_metrics_port": 0, "chat_metrics_port": 0},
        "edge": {"host": "127.0.0.1"},
    }
    if args.chat_out:
        overrides["chat"] = {"max_out": args.chat_out}
    config = write_config(Path(args.start_system), workdir / "config.toml", overrides)
    plan = SystemPlan(
        config=config,
        workdir=workdir,
        tool_model=args.tool_model,
        chat_model=args.chat_model,
    )
    async with contextlib.AsyncExitStack() as stack:
        system = System(plan, stack)
        await system.start()
        yield system


# -- the run -----------------------------------------------------------------------------


class Rows:
    """The rows so far, rewritten after every scenario: a run cut short keeps them."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self.rows: list[dict[str, Any]] = []

    def add(self, rows: list[dict[str, Any]], **labels: Any) -> None:
        for row in rows:
            row = {**labels, **row}
            self.rows.append(row)
            print(json.dumps(row), flush=True)
        if self._path:
            Path(self._path).write_text(json.dumps(self.rows, indent=1))


def load_tokenizer(args: argparse.Namespace, chat_model: str) -> Any:
    """The chat model's tokenizer, for the workload's texts (same as the raw side's)."""
    if args.tokenizer:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(args.tokenizer)
    if chat_model.startswith("random:"):
        from actors.models.gpu import GPU_SHAPES, build_tokenizer

        return build_tokenizer(GPU_SHAPES[chat_model.removeprefix("random:")].vocab_size)
    if chat_model.startswith("tiny-"):
        from actors.models.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer(chat_model)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chat_model)


class Profiler:
    """py-spy on the system's processes while a phase runs; summaries by area after.

    py-spy writes its samples when it is interrupted (SIGINT), so it runs exactly as
    long as the phase it profiles.
    """

    def __init__(self, out_dir: Path, pids: Mapping[str, int]) -> None:
        self._out_dir = out_dir
        self._pids = dict(pids)
        self._spies: dict[str, Any] = {}

    async def __aenter__(self) -> Profiler:
        from launcher.process import ChildProcess

        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        for name, pid in self._pids.items():
            spy = ChildProcess(
                f"py-spy-{name}",
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(self._out_dir / f"{name}.collapsed.txt"),
                ],
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await spy.start()
            self._spies[name] = spy
        return self

    async def __aexit__(self, *exc: object) -> None:
        from bench.overhead.profile import render_profile, summarize_profile

        for spy in self._spies.values():
            if spy.pid is not None and spy.running:
                os.kill(spy.pid, signal.SIGINT)
        async with asyncio.timeout(60):
            for spy in self._spies.values():
                await spy.wait()
        for name in self._spies:
            path = self._out_dir / f"{name}.collapsed.txt"
            if path.exists() and path.stat().st_size:
                summary = summarize_profile(path.read_text())
                (self._out_dir / f"{name}-top.txt").write_text(render_profile(name, summary))


async def drive(
    urls: Mapping[str, str],
    args: argparse.Namespace,
    out: Rows,
    chat_model: str,
    sessions: Sequence[int],
    workload: Workload,
) -> None:
    tokenizer = load_tokenizer(args, chat_model)
    persona = text_of_tokens(tokenizer, random.Random(0), workload.persona_tokens, PERSONA_LEAD)
    await warm_persona(urls[args.modes[0]], args.api_key, persona)
    for count in sessions:
        for mode in args.modes:
            began = time.perf_counter()
            name = f"{mode}-{count}-{chat_model}-{time.monotonic_ns()}"
            rows = await scenario(
                urls[mode], args.api_key, tokenizer, persona, count, workload, name
            )
            out.add(
                rows, mode=mode, chat_model=chat_model, wall_s=round(time.perf_counter() - began, 2)
            )


async def _run(args: argparse.Namespace) -> list[dict[str, Any]]:
    workload = Workload(
        persona_tokens=args.persona_tokens,
        history_tokens=args.history_tokens,
        chat_out=args.chat_out or 200,
        turns=args.turns,
        think_s=args.think_s,
    )
    out = Rows(args.out)
    chat_model = args.chat_model or "random:llama-3.1-8b"
    if not args.start_system:
        urls = {mode: args.url for mode in MODES}
        await drive(urls, args, out, chat_model, args.sessions, workload)
        return out.rows
    async with running_system(args) as system:
        async with contextlib.AsyncExitStack() as profiling:
            if args.profile:
                await profiling.enter_async_context(Profiler(Path(args.profile), system.pids()))
            await drive(system.urls, args, out, chat_model, args.sessions, workload)
        for model in args.extra_chat_model:
            await system.replace_chat(model)
            await drive(system.urls, args, out, model, args.extra_sessions, workload)
    return out.rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_fullstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="a running system")
    parser.add_argument("--api-key", default="yap_token")
    parser.add_argument(
        "--start-system", metavar="CONFIG", help="start the system from this config first"
    )
    parser.add_argument("--workdir", default="gpu-out/system", help="logs and config")
    parser.add_argument("--tool-model", default=None, help="TOOL_MODEL for the actors")
    parser.add_argument("--chat-model", default=None, help="CHAT_MODEL for the actors")
    parser.add_argument("--extra-chat-model", action="append", default=[])
    parser.add_argument("--extra-sessions", type=int_list, default=[16])
    parser.add_argument("--tokenizer", help="a model directory whose tokenizer builds the texts")
    parser.add_argument("--sessions", type=int_list, default=[1, 16])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--think-s", type=float, default=0.5)
    parser.add_argument("--persona-tokens", type=int, default=900)
    parser.add_argument("--history-tokens", type=int, default=1500)
    parser.add_argument("--chat-out", type=int, default=0, help="chat.max_out (0: config's)")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy the actors and edges during the main runs"
    )
    args = parser.parse_args(argv)
    if args.start_system:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    rows = asyncio.run(_run(args))
    return 0 if rows and all(not r["failed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
