"""The full stack on a GPU: WebSocket client -> edge -> NATS -> actors -> vLLM.

The same workload as ``bench/gpu_raw.py`` (persona ~900 tokens shared, history
~1500 tokens per session, ~30-token utterance, 200 tokens out; N sessions start
each turn at once, three turns, the next one ``--think-s`` after the last reply),
sent as the protocol's own messages. Each session first sets and warms its persona
(``set_persona``, ``warm_persona``), as our clients prime a session, so the chat
replica that will serve it holds the persona before turn 1. Each session's history
is built the way our clients build it (``bus.history``: this history, the
utterance, the reply the client received), so the chat actor's next-turn warming
can hit. Times are measured by the client, from sending ``start``.

With ``--start-system CONFIG`` it runs the system itself through the launcher
library (``launcher.supervisor.Launcher``, as ``just up`` does): nats-server with a
user per process, the tool actor, then the chat actor (one after the other, as
their GPU memory profiling needs), and two edges on the same bus, ``edge-0``
sequential and ``edge-1`` concurrent (per-edge ``models.concurrent_model_call``),
so both modes share one engine start. ``--extra-chat-model`` then restarts the chat
actor alone on another model (the Mistral-Nemo-12B shape, say) and runs
``--extra-sessions`` in both modes. Without it, it drives a running system at
``--url``.

Every turn's chat leg is matched with the ``done`` event its actor published
(a listener on the bus with a user of its own, ``all_out("done")``), so each row
knows which chat replica served each session, the replicas' prefix-cache hit rate
(cached / prompt tokens) and how many sessions changed replica (none should: the
edge keeps a session on the replica that holds its cache). The tool leg's done is
read too: each leg's stamps (``Done.timing``) give it by stage, with the hops from
the client's clock (``leg_stages``), and how far apart the burst reached each stamp.

``--layouts`` runs the multi-GPU comparison (issue 12, ``bench/gpu_layouts.py``):
the tool and chat replicas placed over the GPUs, layouts measured one after the
other at ``--layout-sessions`` by starting and stopping chat replicas, rows to
``--layout-out``. On one GPU it is the smoke version: (a), then two chat replicas
by memory fraction. The main runs (``--sessions``) then run on the first layout.

    python -m bench.gpu_fullstack --start-system configs/gpu.toml --sessions 1,16 \\
        --tool-model random:qwen2.5-1.5b --chat-model random:llama-3.1-8b --out full.json
    python -m bench.gpu_fullstack --start-system configs/gpu.toml --sessions '' \\
        --layouts auto --layout-sessions 16,32,64 --layout-out multigpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.gpu_layouts import Layout, Placement, gpu_count, placement_for, transition
from bench.gpu_raw import (
    PERSONA_LEAD,
    UTTERANCE_LEAD,
    Workload,
    device_name,
    history_of,
    int_list,
    spreads_ms,
    stages_p50_ms,
    summary_ms,
    text_of_tokens,
)
from bus import subjects
from bus.codec import BusDecodeError, Codec
from bus.events import ActorKind, Done, LegTiming
from bus.history import append_turn
from bus.permissions import Role
from clients.turn import FrameStream, TurnResult, open_stream, run_turn
from configs.loader import load_config
from configs.schema import Config
from launcher.net import free_port
from launcher.plan import SlotOverrides
from launcher.supervisor import Launcher, LaunchOptions

__all__ = ["DoneTap", "main", "scenario", "system_config"]

MODES: Final = ("sequential", "concurrent")
# How long an actor may take to come up: a vLLM engine compiles and captures graphs.
ACTOR_READY_S: Final = 420.0
EDGE_READY_S: Final = 60.0
# A vLLM actor closes its engine on SIGTERM; give it that long before SIGKILL.
STOP_S: Final = 30.0
# The bench's own bus user: it reads the actors' done events, nothing else.
TAP_USER: Final = "bench-tap"
# How long a turn's done event may trail the client's done frame.
TAP_WAIT_S: Final = 10.0
PERSONA_STYLE: Final = "wholesome"
GENDER: Final = "female"


def _start(session_id: str, persona: str, history: str, utterance: str) -> dict[str, Any]:
    return {
        "type": "start",
        "session_id": session_id,
        "assistant_gender": GENDER,
        "persona_style": PERSONA_STYLE,
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
        # What the tool generated before its early stop took effect.
        "tool_tokens": float(usage.get("tool_completion_tokens", 0)),
    }


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


# -- which replica served a turn -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Served:
    """One leg of one turn, as its actor reported it when it ended."""

    actor_id: str
    prompt_tokens: int
    cached_tokens: int
    timing: LegTiming | None = None


class DoneTap:
    """The actors' ``done`` events of every session, read from the bus as published.

    The outbound subject names the sending actor, so a chat leg's done event says
    which replica served that turn; the client learns the turn id from the ``ack``.
    Only done events are received (one per leg), not the token stream; each carries
    its leg's stamps (``LegTiming``).

    Args:
        urls, user, password: the bus and this listener's own user on it.
    """

    def __init__(self, urls: Sequence[str], user: str | None, password: str | None) -> None:
        self._urls = list(urls)
        self._user = user
        self._password = password
        self._codec = Codec()
        self._client: Client | None = None
        self._served: dict[tuple[str, str, str], Served] = {}
        self._waiting: dict[tuple[str, str, str], asyncio.Future[Served]] = {}

    @staticmethod
    def role() -> Role:
        """The bus user the launcher must admit for it."""
        return Role(user=TAP_USER, publish=(), subscribe=(subjects.all_out("done"),))

    async def __aenter__(self) -> Self:
        self._client = await nats.connect(
            servers=self._urls, user=self._user, password=self._password, name=TAP_USER
        )
        await self._client.subscribe(subjects.all_out("done"), cb=self._on_done)
        await self._client.flush()  # subscribed before the first turn starts
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for future in self._waiting.values():
            future.cancel()
        if self._client is not None:
            await self._client.close()

    async def _on_done(self, msg: Msg) -> None:
        parsed = subjects.parse_edge_out(msg.subject)
        if parsed is None:
            return
        try:
            event = self._codec.decode_outbound(msg.data)
        except BusDecodeError:
            return
        if not isinstance(event, Done):
            return
        key = (event.session_id, event.turn_id, event.kind)
        served = Served(parsed[1], event.prompt_tokens, event.cached_tokens, event.timing)
        self._served[key] = served
        waiter = self._waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(served)

    async def served(
        self, session_id: str, turn_id: str, within: float, kind: ActorKind = "chat"
    ) -> Served | None:
        """The ``kind`` leg of ``turn_id``, waiting up to ``within`` s for its done event."""
        key = (session_id, turn_id, kind)
        if key in self._served:
            return self._served.pop(key)
        waiter = self._waiting.setdefault(key, asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(within):
                return await waiter
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(key, None)
            self._served.pop(key, None)


def _replica_stats(served: Sequence[Served]) -> dict[str, dict[str, float]]:
    """Per chat replica: sessions served, prompt and cached tokens, their ratio."""
    stats: dict[str, dict[str, float]] = {}
    for leg in served:
        entry = stats.setdefault(
            leg.actor_id, {"sessions": 0, "prompt_tokens": 0, "cached_tokens": 0}
        )
        entry["sessions"] += 1
        entry["prompt_tokens"] += leg.prompt_tokens
        entry["cached_tokens"] += leg.cached_tokens
    for entry in stats.values():
        prompt = entry["prompt_tokens"]
        entry["hit_rate"] = round(entry["cached_tokens"] / prompt, 4) if prompt else 0.0
    return dict(sorted(stats.items()))


# -- one scenario ------------------------------------------------------------------------


async def prime(stream: FrameStream, session_id: str, persona: str) -> None:
    """Set the session's persona and warm it, as our clients prime a session: the
    chat replica that takes the warm becomes the session's home."""
    await stream.send(
        {
            "type": "set_persona",
            "session_id": session_id,
            "assistant_gender": GENDER,
            "persona_style": PERSONA_STYLE,
            "persona_text": persona,
        }
    )
    await _until_frame(stream, "ack")
    await stream.send({"type": "warm_persona"})
    await _until_frame(stream, "warmed")


async def _until_frame(stream: FrameStream, kind: str) -> None:
    async with asyncio.timeout(120):
        while True:
            frame = await stream.receive(120)
            if frame.type == kind:
                return
            if frame.type == "error":
                raise RuntimeError(f"priming a session failed: {dict(frame.data)}")


async def scenario(
    url: str,
    api_key: str,
    tokenizer: Any,
    persona: str,
    sessions: int,
    workload: Workload,
    name: str,
    tap: DoneTap | None = None,
) -> list[dict[str, Any]]:
    """N sessions, ``workload.turns`` turns each, every turn started by all at once."""
    rngs = [random.Random(f"{name}/{i}") for i in range(sessions)]
    histories = [history_of(tokenizer, rng, workload.history_tokens) for rng in rngs]
    ids = [f"gpu-{i}-{uuid.uuid4().hex[:8]}" for i in range(sessions)]
    homes: list[str | None] = [None] * sessions
    rows = []
    async with contextlib.AsyncExitStack() as connections:
        streams: list[FrameStream] = list(
            await asyncio.gather(
                *(connections.enter_async_context(open_stream(url, api_key)) for _ in ids)
            )
        )
        await asyncio.gather(*(prime(s, ids[i], persona) for i, s in enumerate(streams)))
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
            row["tool_tokens_p50"] = _median([t["tool_tokens"] for t in timings])
            row["prompt_tokens_p50"] = _median([t["prompt"] for t in timings])
            ended = [r.frames[-1].at for r in results if r.ok and r.frames]
            burst_s = max(ended) - min(r.sent_at for r in results) if ended else 0.0
            row["turns_per_s"] = round(len(timings) / burst_s, 3) if burst_s > 0 else 0.0
            if tap is not None:
                served = await asyncio.gather(
                    *(_served_by(tap, ids[i], r) for i, r in enumerate(results))
                )
                tools = await asyncio.gather(
                    *(_served_by(tap, ids[i], r, "tool") for i, r in enumerate(results))
                )
                for kind, legs_of, frame in (
                    ("tool", tools, "toolcall"),
                    ("chat", served, "token"),
                ):
                    stages = [
                        leg_stages(r, leg, frame) for r, leg in zip(results, legs_of, strict=True)
                    ]
                    row[f"{kind}_stages_ms"] = stages_p50_ms([s for s in stages if s is not None])
                    timings = [leg.timing for leg in legs_of if leg is not None and leg.timing]
                    row[f"{kind}_spread_ms"] = spreads_ms(timings)
                # The tool prompt's prefix-cache hit, beside raw's tool_cached_tokens.
                tool_legs = [leg for leg in tools if leg is not None]
                row["tool_cached_tokens_p50"] = _median([leg.cached_tokens for leg in tool_legs])
                row["tool_prompt_tokens_p50"] = _median([leg.prompt_tokens for leg in tool_legs])
                sent = [r.sent_at for r in results]
                row["sent_spread_ms"] = round((max(sent) - min(sent)) * 1e3, 2)
                legs = [leg for leg in served if leg is not None]
                row["replicas"] = _replica_stats(legs)
                row["unmatched"] = sum(
                    1 for r, leg in zip(results, served, strict=True) if r.ok and not leg
                )
                moved = 0
                for i, leg in enumerate(served):
                    if leg is None:
                        continue
                    moved += homes[i] is not None and homes[i] != leg.actor_id
                    homes[i] = leg.actor_id
                row["moved"] = moved
            rows.append(row)
            for i, result in enumerate(results):
                # What the client was sent is what it appends (bus.history).
                histories[i] = append_turn(histories[i], utterances[i], result.text)
    return rows


async def _served_by(
    tap: DoneTap, session_id: str, result: TurnResult, kind: ActorKind = "chat"
) -> Served | None:
    turn_id = (result.ack or {}).get("turn_id")
    if not result.ok or not isinstance(turn_id, str):
        return None
    return await tap.served(session_id, turn_id, TAP_WAIT_S, kind)


def leg_stages(result: TurnResult, leg: Served | None, frame: str) -> dict[str, float] | None:
    """Where one leg's wait went, seconds by stage: the actor's stamps
    (``LegTiming.stages``), with the hops on either side from the client's clock:
    ``inbound`` (client send to the actor's handler: WebSocket, edge, NATS) and
    ``outbound`` (the actor's first event to the client's first ``frame``: NATS,
    edge, WebSocket; for a concurrent turn's chat, the edge's hold for the decision).
    The client and the actors share one host's monotonic clock."""
    timing = leg.timing if leg is not None else None
    if timing is None:
        return None
    stages = timing.stages()
    if timing.received:
        stages["inbound"] = timing.received - result.sent_at
    arrived = next((f.at for f in result.frames if f.type == frame), None)
    if arrived is not None and timing.first_event:
        stages["outbound"] = arrived - timing.first_event
    return stages


# -- running the system ------------------------------------------------------------------


def system_config(
    base: Config, args: argparse.Namespace, workdir: Path, placement: Placement | None
) -> Config:
    """``base`` (the deployment file, env overrides applied) set up for the benchmark:
    the models asked for, fixed-length replies, free ports, two edges, the layouts'
    replicas."""
    data: dict[str, Any] = msgspec.to_builtins(base)
    if args.tool_model:
        data["tool"]["model"] = args.tool_model
    if args.chat_model:
        data["chat"]["model"] = args.chat_model
    if args.chat_out:
        data["chat"]["max_out"] = args.chat_out
    if args.tool_out:
        # Random weights rarely say "[]" at once; capping the answer as bench.gpu_raw's
        # "raw 2" rows do compares the same engine work on both sides.
        data["tool"]["max_out"] = args.tool_out
    if args.chat_frac:
        data["chat"]["gpu_frac"] = args.chat_frac
    if args.max_num_batched_tokens:
        # As bench.gpu_raw's flag of the same name: every engine, one step budget.
        for kind in ("tool", "chat"):
            data[kind]["max_num_batched_tokens"] = args.max_num_batched_tokens
    # Like bench.gpu_raw, every reply runs its full length whatever random weights
    # sample.
    data["chat"]["sampling"]["ignore_eos"] = True
    data["edge"].update(
        host="127.0.0.1",
        port=free_port(),
        # One edge per mode (each a lone edge: see running_system); every session of
        # the largest scenario fits.
        processes=len(MODES),
        max_concurrent_connections=512,
        slots_path=str(workdir / "edge-slots"),
    )
    data["models"]["concurrent_model_call"] = False  # edge-1 overrides it
    # Free ports on a shared host: no fixed metrics or bus ports. No actor refuses a
    # turn of the largest burst for being at its limit.
    data["actor"].update(tool_metrics_port=0, chat_metrics_port=0, max_running=256)
    data["nats_server"].update(port=0, monitor_port=0, store_dir=str(workdir / "nats"))
    if placement is not None:
        data["actor"].update(placement.actor_section())
    return msgspec.convert(data, Config)


@contextlib.asynccontextmanager
async def running_system(
    args: argparse.Namespace, base: Config, env: Mapping[str, str], placement: Placement | None
) -> AsyncIterator[Launcher]:
    """The deployment, run by the launcher; edge ``i`` serves ``MODES[i]``."""
    workdir = Path(args.workdir)  # absolute, made by main()
    config = system_config(base, args, workdir, placement)
    # The edges listen side by side, one per mode, each on a port of its own: each is
    # a lone edge as a deployment runs one (edge.processes 1: no shared port, its own
    # connection count), only the plan has two.
    overrides: dict[str, SlotOverrides] = {
        "edge-0": {"edge": {"processes": 1}},
        "edge-1": {
            "edge": {"processes": 1, "port": free_port()},
            "models": {"concurrent_model_call": True},
        },
    }
    options = LaunchOptions(
        work_dir=workdir,
        log_dir=workdir,
        actor_ready_timeout_s=ACTOR_READY_S,
        edge_ready_timeout_s=EDGE_READY_S,
        stop_timeout_s=STOP_S,
        overrides=overrides,
        deferred=placement.deferred() if placement is not None else frozenset(),
        roles=(DoneTap.role(),),
    )
    began = time.perf_counter()
    async with Launcher(config, env, options) as launcher:
        print(f"# system ready in {time.perf_counter() - began:.1f} s", flush=True)
        try:
            yield launcher
        finally:
            _print_services(launcher)


def _print_services(launcher: Launcher) -> None:
    """Each slot's state and restarts: a crash during the run shows here."""
    for status in launcher.status():
        print(
            f"# {status.name}: {status.state}, restarts {status.restarts}, "
            f"last exit {status.last_exit or '-'}",
            flush=True,
        )


def _urls(launcher: Launcher) -> dict[str, str]:
    urls = {}
    for index, mode in enumerate(MODES):
        host, port = launcher.edge_address(index)
        urls[mode] = f"ws://{host}:{port}/ws"
    return urls


# -- the run -----------------------------------------------------------------------------


class Rows:
    """The rows so far, rewritten after every scenario: a run cut short keeps them.

    ``header`` given: the file is an object (the header's keys and ``rows``), else a
    list of rows.
    """

    def __init__(self, path: str | None, header: Mapping[str, Any] | None = None) -> None:
        self._path = path
        self._header = dict(header) if header is not None else None
        self.rows: list[dict[str, Any]] = []

    def add(self, rows: list[dict[str, Any]], **labels: Any) -> None:
        for row in rows:
            row = {**labels, **row}
            self.rows.append(row)
            print(json.dumps(row), flush=True)
        self.save()

    def save(self) -> None:
        if not self._path:
            return
        data: Any = self.rows if self._header is None else {**self._header, "rows": self.rows}
        Path(self._path).write_text(json.dumps(data, indent=1))


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


@dataclass(frozen=True, slots=True)
class Driver:
    """What every scenario of a run shares: where, how much, and the tap."""

    urls: Mapping[str, str]
    api_key: str
    modes: Sequence[str]
    workload: Workload
    tap: DoneTap | None

    async def run(
        self, out: Rows, tokenizer: Any, chat_model: str, sessions: Sequence[int], **labels: Any
    ) -> None:
        persona = text_of_tokens(
            tokenizer, random.Random(0), self.workload.persona_tokens, PERSONA_LEAD
        )
        for count in sessions:
            for mode in self.modes:
                began = time.perf_counter()
                name = f"{mode}-{count}-{chat_model}-{time.monotonic_ns()}"
                rows = await scenario(
                    self.urls[mode],
                    self.api_key,
                    tokenizer,
                    persona,
                    count,
                    self.workload,
                    name,
                    self.tap,
                )
                wall_s = round(time.perf_counter() - began, 2)
                out.add(rows, **labels, mode=mode, chat_model=chat_model, wall_s=wall_s)


async def run_layouts(
    launcher: Launcher,
    driver: Driver,
    placement: Placement,
    out: Rows,
    tokenizer: Any,
    chat_model: str,
    sessions: Sequence[int],
    measured: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Each layout of ``placement`` in turn: start and stop chat replicas, measure.

    ``measured``: rows the main runs took on the first layout; the sessions counts
    they cover are taken from them instead of being run again.
    """
    first = placement.layouts[0].name
    reused = [r for r in measured if r["sessions"] in sessions and r["chat_model"] == chat_model]
    if reused:
        out.rows.extend(reused)
        out.save()
    covered = {r["sessions"] for r in reused}
    for layout in placement.layouts:
        await apply_layout(launcher, placement, layout)
        todo = [n for n in sessions if layout.name != first or n not in covered]
        if todo:
            await driver.run(out, tokenizer, chat_model, todo, layout=layout.name)


async def apply_layout(launcher: Launcher, placement: Placement, layout: Layout) -> None:
    """Make exactly ``layout``'s chat replicas serve (stops first: GPU memory)."""
    running = [
        slot
        for slot in placement.chat_slots
        if launcher.services[slot].state not in ("pending", "stopped", "failed")
    ]
    stop, start = transition(running, layout)
    for slot in stop:
        await launcher.stop_slot(slot)
    for slot in start:
        began = time.perf_counter()
        await launcher.start_slot(slot)
        print(f"# {slot} ready in {time.perf_counter() - began:.1f} s", flush=True)
    print(f"# layout ({layout.name}): {placement.describe(layout)}", flush=True)


async def _run(
    args: argparse.Namespace,
    base: Config | None,
    env: Mapping[str, str],
    placement: Placement | None,
    device: str,
) -> bool:
    """All the runs; True when every turn of every row completed.

    Args:
        base: the deployment to start (``--start-system``), None to drive ``--url``.
        env: the environment the system's processes start from.
        placement: the layouts to run (``--layouts``), if any.
        device: the GPUs, as nvidia-smi names them, for the layouts' file.
    """
    workload = Workload(
        persona_tokens=args.persona_tokens,
        history_tokens=args.history_tokens,
        chat_out=args.chat_out or 200,
        turns=args.turns,
        think_s=args.think_s,
    )
    out = Rows(args.out)
    chat_model = args.chat_model or "random:llama-3.1-8b"
    if base is None:
        driver = Driver(
            {mode: args.url for mode in MODES}, args.api_key, args.modes, workload, None
        )
        await driver.run(out, load_tokenizer(args, chat_model), chat_model, args.sessions)
        return bool(out.rows) and _all_ok(out.rows)
    layout_rows = Rows(args.layout_out, _layout_header(args, placement, device))
    tokenizer = load_tokenizer(args, chat_model)
    async with running_system(args, base, env, placement) as launcher:
        credentials = launcher.credentials(TAP_USER)
        async with DoneTap(
            launcher.bus_urls,
            credentials.user if credentials else None,
            credentials.password if credentials else None,
        ) as tap:
            driver = Driver(_urls(launcher), args.api_key, args.modes, workload, tap)
            labels = {"layout": placement.layouts[0].name} if placement else {}
            async with contextlib.AsyncExitStack() as profiling:
                if args.profile:
                    pids = {k: v for k, v in launcher.pids.items() if not k.startswith("nats")}
                    await profiling.enter_async_context(Profiler(Path(args.profile), pids))
                await driver.run(out, tokenizer, chat_model, args.sessions, **labels)
            if placement is not None:
                await run_layouts(
                    launcher,
                    driver,
                    placement,
                    layout_rows,
                    tokenizer,
                    chat_model,
                    args.layout_sessions,
                    measured=out.rows,
                )
                if args.extra_chat_model:
                    # The other chat models run on the first layout, like the main runs.
                    await apply_layout(launcher, placement, placement.layouts[0])
            for model in args.extra_chat_model:
                began = time.perf_counter()
                await launcher.restart_slot("chat-0", {"chat": {"model": model}})
                took = time.perf_counter() - began
                print(f"# chat-0 on {model} ready in {took:.1f} s", flush=True)
                extra_tokenizer = load_tokenizer(args, model)
                await driver.run(out, extra_tokenizer, model, args.extra_sessions, **labels)
    return bool(out.rows or layout_rows.rows) and _all_ok(out.rows) and _all_ok(layout_rows.rows)


def _all_ok(rows: Sequence[Mapping[str, Any]]) -> bool:
    """No failed turn, every chat leg seen on the bus, no session off its replica."""
    return all(not r["failed"] and not r.get("unmatched") and not r.get("moved") for r in rows)


def _layout_header(
    args: argparse.Namespace, placement: Placement | None, device: str
) -> dict[str, Any]:
    if placement is None:
        return {}
    return {
        "device": device,
        "gpus": placement.gpus,
        "command": " ".join([sys.executable, "-m", "bench.gpu_fullstack", *sys.argv[1:]]),
        "models": {"tool": args.tool_model, "chat": args.chat_model},
        "layouts": [
            {"name": layout.name, "title": layout.title, "placement": placement.describe(layout)}
            for layout in placement.layouts
        ],
    }


def _layout_names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


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
    parser.add_argument("--tool-model", default=None, help="the tool actor's model")
    parser.add_argument("--chat-model", default=None, help="the chat actor's model")
    parser.add_argument("--chat-frac", type=float, default=None, help="chat.gpu_frac")
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
    parser.add_argument("--tool-out", type=int, default=0, help="tool.max_out (0: config's)")
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="tool and chat max_num_batched_tokens (default: the config's)",
    )
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy the actors and edges during the main runs"
    )
    parser.add_argument(
        "--layouts",
        type=_layout_names,
        default=[],
        help="'auto' (every layout the GPUs allow) or names (a,b,c,d; c1 on one GPU)",
    )
    parser.add_argument("--gpus", type=int, default=0, help="GPUs to plan for (0: nvidia-smi)")
    parser.add_argument("--layout-sessions", type=int_list, default=[16, 32, 64])
    parser.add_argument("--layout-out", help="write the layouts' rows as JSON here")
    args = parser.parse_args(argv)
    if args.layouts and not args.start_system:
        parser.error("--layouts needs --start-system")
    placement, device = None, ""
    if args.layouts:
        gpus = args.gpus or gpu_count()
        try:
            placement = placement_for(gpus, () if args.layouts == ["auto"] else args.layouts)
        except ValueError as exc:
            parser.error(f"--layouts: {exc}")
        device = "; ".join(device_name().splitlines())
    base = None
    if args.start_system:
        # The deployment file and the environment are read here, at the entrypoint.
        base = load_config(args.start_system, os.environ)
        args.workdir = str(Path(args.workdir).absolute())
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    return 0 if asyncio.run(_run(args, base, dict(os.environ), placement, device)) else 1


if __name__ == "__main__":
    sys.exit(main())
