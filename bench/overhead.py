"""Bus overhead benchmark: what the edge, NATS and the actor add to a token stream.

``python -m bench.overhead [--concurrency 1,16,64,256] [--tokens N] [--rate TOKS_PER_S]
[--duration S] [--json out.json] [--plot out.png] [--profile DIR]``

Every piece is its own process on this host, started from a temp dir and stopped
at the end:

* a real nats-server on free ports;
* side (a), ``bus``: one chat actor with ``backend = "bench"`` and the real edge,
  ``deploy = "chat"`` (no toolcall leg), configured as deployed (INFO logs to a
  file, per-message rate limits off so that back-to-back turns are not throttled);
* side (b), ``direct``: ``bench.direct_server``, the same engine behind a bare
  websockets server in one process;
* the load client, ``python -m bench.overhead --client SPEC``, on uvloop.

Both sides run the same ``BenchEngine`` at the same ``--rate`` (tokens/s per
session) with ``bench_stamp``: each delta is ``tok@<monotonic_ns> ``, taken when the
engine yields it. CLOCK_MONOTONIC is one clock for all processes of a Linux host,
so the client's ``monotonic_ns()`` at arrival minus the stamp is the true one-way
delay, engine emit -> client receive, counted per token even when the edge merged
several deltas into one frame. For each concurrency level, each side gets N
sessions on persistent connections, each running turns back to back; every
``--cancel-every``-th turn is cancelled after ``--cancel-after`` tokens. Measured,
after a warm-up, over ``--duration`` seconds:

* ``ttft``: client sends ``start`` -> first token frame arrives;
* ``one_way``: per token, arrival - stamp (the "added per-token latency");
* ``engine_lag``: per token, stamp - the engine's schedule for it (origin + k/rate,
  the origin estimated per turn from its least late token): how late the engine's
  own process ran, which ``one_way`` does not see;
* ``cancel_to_abort``: client sends ``cancel`` -> the engine records the abort. The
  engine appends ``<request_id> <monotonic_ns>`` to ``bench_abort_log``; the
  client joins those lines with its cancel times by turn id (the ``ack``'s);
* ``cancel_to_done``: client sends ``cancel`` -> ``done`` with ``cancelled``;
* CPU per process (``/proc/<pid>/stat``) and the machine's (``/proc/stat``) over
  the window; ``foreign`` is the machine's busy time not ours (other users).

Then a throughput ladder (``--tput-sessions`` sessions, ``--tput-tokens`` per turn,
per-session rates from ``--tput-rates``, no cancels; actor and direct server
restarted at each rate) finds, per side, the most tokens/s delivered while the
one-way p99 stays under 5 ms, with no errors and at least 90% of the offered rate
delivered (a side stops after failing two steps in a row); and one phase with
``deploy = "both"`` (tool actor too) at ``--both-concurrency`` sessions shows the
tool hop. ``--profile DIR`` adds a bus phase with py-spy sampling the edge and the
actor and writes where the time goes. Results: a table on stdout, ``--json``,
``--plot``.

The machine may be shared: before each phase the run waits (up to
``--quiet-wait`` s) for the machine to idle, and a phase during which processes not
ours used more than ``--max-foreign`` percent of a core is run again (up to
``--retries`` times), keeping the least disturbed attempt; the table shows what
others used (``foreign``) in the kept one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TextIO

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bus.loop import loop_factory
from clients.metrics import summarize
from configs.loader import ENV_OVERRIDES
from launcher.nats import NatsServer
from launcher.net import free_port, http_status
from launcher.process import ChildProcess

__all__ = ["PhaseResult", "PhaseSpec", "main", "run_benchmark"]

Side = Literal["bus", "direct"]

API_KEY: Final = "overhead-bench"
STAMP: Final = re.compile(r"@(\d+)")
P99_BOUND_MS: Final = 5.0
DELIVERED_SHARE: Final = 0.9
LADDER_FAILURES: Final = 2
TURN_TIMEOUT_S: Final = 30.0
READY_TIMEOUT_S: Final = 60.0
ABORT_LOG_GRACE_S: Final = 0.3
# What the issue asks of this machine (bus side, or bus minus direct where "added").
TARGET_TTFT_P50_MS: Final = 0.5
TARGET_TTFT_P99_MS: Final = 2.0
TARGET_CANCEL_P99_MS: Final = 2.0
TARGET_TOKENS_PER_S: Final = 50_000
TARGET_SESSIONS: Final = 16


# --- what passes between the orchestrator and the client process --------------------


class PhaseSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One load phase: ``sessions`` connections to ``url`` for ``warmup_s + duration_s``."""

    name: str
    side: Side
    deploy: str
    url: str
    sessions: int
    tokens: int
    rate: float
    warmup_s: float
    duration_s: float
    cancel_every: int
    cancel_after: int
    # Engine steps before the first chat token: 1, or 2 with a tool leg before chat.
    engine_steps: int
    compression: bool
    abort_log: str | None
    pids: dict[str, int]
    out: str


class PhaseResult(msgspec.Struct, kw_only=True):
    """A phase's outcome; distributions in ms (``count``, ``p50``, ``p95``, ``p99``...)."""

    name: str
    side: Side
    deploy: str
    sessions: int
    tokens: int
    rate: float
    window_s: float
    turns: int = 0
    cancels: int = 0
    cancels_late: int = 0
    errors: dict[str, int] = {}
    tokens_received: int = 0
    token_frames: int = 0
    tokens_per_s: float = 0.0
    ttft_ms: dict[str, float] | None = None
    ttft_excess_ms: dict[str, float] | None = None
    first_emit_ms: dict[str, float] | None = None
    one_way_ms: dict[str, float] | None = None
    engine_lag_ms: dict[str, float] | None = None
    cancel_to_abort_ms: dict[str, float] | None = None
    cancel_to_done_ms: dict[str, float] | None = None
    cpu_percent: dict[str, float] = {}
    attempts: int = 1

    @property
    def offered_tokens_per_s(self) -> float:
        return self.sessions * self.rate

    def cpu_us_per_token(self, process: str) -> float | None:
        """CPU microseconds ``process`` spent per token delivered in the window."""
        percent = self.cpu_percent.get(process)
        if percent is None or self.tokens_per_s <= 0:
            return None
        return round(percent / 100.0 / self.tokens_per_s * 1e6, 1)


def _dist(values_ns: Sequence[int]) -> dict[str, float] | None:
    summary = summarize([v / 1e6 for v in values_ns])
    return None if summary is None else summary.as_dict(digits=3)


# --- the load client (its own process) ------------------------------------------------


@dataclass(slots=True)
class _Recorder:
    """Samples of one phase, in ns; only what falls in the measurement window counts."""

    interval_ns: int
    window_start: int = 0
    window_end: int = 0
    ttft: list[int] = field(default_factory=list)
    first_emit: list[int] = field(default_factory=list)
    one_way: array[int] = field(default_factory=lambda: array("q"))
    lag: array[int] = field(default_factory=lambda: array("q"))
    cancel_sent: dict[str, int] = field(default_factory=dict)
    cancel_done: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    turns: int = 0
    tokens: int = 0
    frames: int = 0

    def counts(self, at: int) -> bool:
        return self.window_start <= at < self.window_end


class _Reconnect(Exception):
    """The connection's state is unknown (an error or a timeout): open a new one."""


_CANCEL: Final = json.dumps({"type": "cancel"})
_decoder: Final = msgspec.json.Decoder()


async def _run_turn(
    ws: ClientConnection, spec: PhaseSpec, rec: _Recorder, start: str, cancel: bool
) -> None:
    decode = _decoder.decode
    sent = time.monotonic_ns()
    await ws.send(start)
    timed = rec.counts(sent)
    turn_id = ""
    seen = 0
    cancel_at = 0
    # (index in the turn, stamp) of the tokens counted, for the engine's lag.
    stamped: list[tuple[int, int]] = []
    try:
        async with asyncio.timeout(TURN_TIMEOUT_S):
            while True:
                raw = await ws.recv()
                now = time.monotonic_ns()
                frame = decode(raw)
                kind = frame.get("type")
                if kind == "token":
                    stamps = STAMP.findall(frame.get("text", ""))
                    counted = rec.counts(now)
                    if counted:
                        rec.frames += 1
                        rec.tokens += len(stamps)
                    for raw_stamp in stamps:
                        stamp = int(raw_stamp)
                        if seen == 0 and timed:
                            rec.ttft.append(now - sent)
                            rec.first_emit.append(stamp - sent)
                        if counted:
                            rec.one_way.append(now - stamp)
                            stamped.append((seen, stamp))
                        seen += 1
                    if cancel and not cancel_at and seen >= spec.cancel_after:
                        cancel_at = time.monotonic_ns()
                        await ws.send(_CANCEL)
                        if rec.counts(cancel_at) and turn_id:
                            rec.cancel_sent[turn_id] = cancel_at
                elif kind == "ack":
                    turn_id = str(frame.get("turn_id", ""))
                elif kind == "done":
                    if frame.get("cancelled"):
                        if cancel_at and rec.counts(cancel_at):
                            rec.cancel_done.append(now - cancel_at)
                    elif frame.get("error_code"):
                        rec.errors[str(frame["error_code"])] += 1
                    elif timed:
                        rec.turns += 1
                    return
                elif kind == "error":
                    rec.errors[str(frame.get("error_code", "unknown"))] += 1
                    raise _Reconnect
    finally:
        _record_lag(rec, stamped)


def _record_lag(rec: _Recorder, stamped: Sequence[tuple[int, int]]) -> None:
    """How late each token left the engine against the turn's schedule.

    The engine paces step ``k`` at ``origin + k * interval``; the origin is not on
    the wire, so it is estimated as the earliest any token allows (the least late
    one has lag 0), which makes every lag non-negative and a lower bound.
    """
    interval = rec.interval_ns
    if not interval or not stamped:
        return
    origin = min(stamp - index * interval for index, stamp in stamped)
    rec.lag.extend(stamp - origin - index * interval for index, stamp in stamped)


async def _session(
    spec: PhaseSpec, rec: _Recorder, index: int, connected: asyncio.Queue[bool], go: asyncio.Event
) -> None:
    session_id = f"ovh-{index}-{uuid.uuid4().hex[:8]}"
    start = json.dumps(
        {
            "type": "start",
            "session_id": session_id,
            "assistant_gender": "female",
            "persona_style": "wholesome",
            "user_utterance": "tell me a story",
        }
    )
    first = True
    turn = 0
    while True:
        try:
            async with connect(
                spec.url,
                proxy=None,
                open_timeout=TURN_TIMEOUT_S,
                close_timeout=2.0,
                compression="deflate" if spec.compression else None,
            ) as ws:
                if first:
                    first = False
                    await connected.put(True)
                    await go.wait()
                while True:
                    turn += 1
                    cancel = spec.cancel_every > 0 and turn % spec.cancel_every == 0
                    await _run_turn(ws, spec, rec, start, cancel)
        except (_Reconnect, TimeoutError, ConnectionClosed) as exc:
            if isinstance(exc, TimeoutError):
                rec.errors["timeout"] += 1
            elif isinstance(exc, ConnectionClosed):
                rec.errors["connection_closed"] += 1
        except (InvalidHandshake, OSError) as exc:
            rec.errors[f"connect_failed:{type(exc).__name__}"] += 1
            if first:
                await connected.put(False)
                return
            await asyncio.sleep(0.1)


def _proc_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (all its threads), None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _machine_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) clock ticks of all CPUs since boot, from ``/proc/stat``.

    Steal is time a vCPU had work but the hypervisor ran someone else: not busy.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle, steal = values[3] + values[4], values[7]
    total = sum(values)
    return total - idle - steal, steal, total


def _cpu_snapshot(
    pids: Mapping[str, int],
) -> tuple[dict[str, int | None], tuple[int, int, int]]:
    return {name: _proc_ticks(pid) for name, pid in pids.items()}, _machine_ticks()


def _cpu_percent(
    before: tuple[dict[str, int | None], tuple[int, int, int]],
    after: tuple[dict[str, int | None], tuple[int, int, int]],
    wall_s: float,
) -> dict[str, float]:
    """Percent of one core per process, ``machine`` (up to 100 x cores), ``foreign``
    (busy, not ours) and ``steal`` (taken by the hypervisor)."""
    tick = os.sysconf("SC_CLK_TCK")
    result: dict[str, float] = {}
    for name, start in before[0].items():
        end = after[0].get(name)
        if start is not None and end is not None and wall_s > 0:
            result[name] = round(100.0 * (end - start) / tick / wall_s, 1)
    busy = after[1][0] - before[1][0]
    steal = after[1][1] - before[1][1]
    total = after[1][2] - before[1][2]
    cores = os.cpu_count() or 1
    if total > 0:
        result["machine"] = round(100.0 * cores * busy / total, 1)
        result["steal"] = round(100.0 * cores * steal / total, 1)
        ours = sum(v for k, v in result.items() if k not in ("machine", "steal"))
        result["foreign"] = round(max(result["machine"] - ours, 0.0), 1)
    return result


def _read_aborts(path: str | None) -> dict[str, int]:
    """turn id -> abort time (ns) from the engine's abort log."""
    aborts: dict[str, int] = {}
    if not path or not os.path.exists(path):
        return aborts
    with open(path) as log:
        for line in log:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                aborts[parts[0].rsplit(":", 1)[-1]] = int(parts[1])
    return aborts


async def run_client(spec: PhaseSpec) -> PhaseResult:
    """Connect every session, run the phase, return what the window saw."""
    interval_ns = int(1e9 / spec.rate) if spec.rate > 0 else 0
    rec = _Recorder(interval_ns=interval_ns)
    pids = {**spec.pids, "client": os.getpid()}
    connected: asyncio.Queue[bool] = asyncio.Queue()
    go = asyncio.Event()
    tasks = [
        asyncio.create_task(_session(spec, rec, i, connected, go)) for i in range(spec.sessions)
    ]
    try:
        for _ in range(spec.sessions):
            await connected.get()
        begin = time.monotonic_ns()
        rec.window_start = begin + int(spec.warmup_s * 1e9)
        rec.window_end = rec.window_start + int(spec.duration_s * 1e9)
        go.set()
        await asyncio.sleep(spec.warmup_s)
        before = _cpu_snapshot(pids)
        window_started = time.monotonic()
        await asyncio.sleep(max(rec.window_end - time.monotonic_ns(), 0) / 1e9)
        after = _cpu_snapshot(pids)
        wall_s = time.monotonic() - window_started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(ABORT_LOG_GRACE_S)
    aborts = _read_aborts(spec.abort_log)
    cancel_to_abort = [
        aborts[turn_id] - sent for turn_id, sent in rec.cancel_sent.items() if turn_id in aborts
    ]
    ttft_excess = [max(t - spec.engine_steps * interval_ns, 0) for t in rec.ttft]
    return PhaseResult(
        name=spec.name,
        side=spec.side,
        deploy=spec.deploy,
        sessions=spec.sessions,
        tokens=spec.tokens,
        rate=spec.rate,
        window_s=round(spec.duration_s, 3),
        turns=rec.turns,
        cancels=len(rec.cancel_sent),
        cancels_late=len(rec.cancel_sent) - len(cancel_to_abort),
        errors=dict(rec.errors),
        tokens_received=rec.tokens,
        token_frames=rec.frames,
        tokens_per_s=round(rec.tokens / spec.duration_s, 1),
        ttft_ms=_dist(rec.ttft),
        ttft_excess_ms=_dist(ttft_excess),
        first_emit_ms=_dist(rec.first_emit),
        one_way_ms=_dist(rec.one_way),
        engine_lag_ms=_dist(rec.lag),
        cancel_to_abort_ms=_dist(cancel_to_abort),
        cancel_to_done_ms=_dist(rec.cancel_done),
        cpu_percent=_cpu_percent(before, after, wall_s),
    )


def _client_main(spec_path: str) -> None:
    spec = msgspec.json.decode(Path(spec_path).read_bytes(), type=PhaseSpec)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(run_client(spec))
    Path(spec.out).write_bytes(msgspec.json.encode(result))


# --- the processes under test ------------------------------------------------------


def _child_env() -> dict[str, str]:
    """This environment without the config overrides, so the TOML file decides."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue
            text = ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


async def _wait_ready(url: str, procs: Sequence[ChildProcess], logs: Path) -> None:
    """Until a turn streams a token and then cancels cleanly on ``url``.

    That is the only readiness that matters here: edge, bus, actor and engine all
    took part, whatever the turn length and rate.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    start = json.dumps(
        {
            "type": "start",
            "session_id": f"probe-{uuid.uuid4().hex[:8]}",
            "assistant_gender": "female",
            "user_utterance": "probe",
        }
    )
    last_error = "no attempt"
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.running:
                tail = (logs / f"{proc.name}.log").read_text()[-2000:]
                raise RuntimeError(f"{proc.name} exited early:\n{tail}")
        try:
            async with (
                asyncio.timeout(5.0),
                connect(url, proxy=None, open_timeout=2.0, close_timeout=1.0) as ws,
            ):
                await ws.send(start)
                while True:
                    frame = json.loads(await ws.recv())
                    kind = frame.get("type")
                    if kind == "token":
                        await ws.send(_CANCEL)
                    elif kind == "done" and frame.get("cancelled"):
                        return
                    elif kind in ("error", "done"):
                        last_error = str(frame.get("error_code"))
                        break
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            last_error = repr(exc)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"no turn streamed on {url} within {READY_TIMEOUT_S:.0f} s: {last_error}")


class _Side:
    """Processes of one side, restartable at another rate; an async context manager."""

    side: Side
    deploy: str = "chat"

    def __init__(self, workdir: Path, tokens: int, rate: float) -> None:
        self.workdir = workdir
        self.tokens = tokens
        self.rate = rate
        self.abort_log = str(workdir / f"aborts-{uuid.uuid4().hex[:6]}.log")
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def engine_steps(self) -> int:
        return 2 if self.deploy == "both" else 1

    def pids(self) -> dict[str, int]:
        raise NotImplementedError

    async def _spawn(self, name: str, argv: Sequence[str]) -> ChildProcess:
        log = self._stack.enter_context((self.workdir / f"{name}.log").open("ab"))
        proc = ChildProcess(
            name, argv, env=_child_env(), stdout=log, stderr=log, stop_timeout_s=10.0
        )
        return await self._stack.enter_async_context(proc)

    async def __aenter__(self) -> _Side:
        await self._stack.__aenter__()
        try:
            await self.start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def start(self) -> None:
        raise NotImplementedError

    async def restart(self, tokens: int, rate: float) -> None:
        raise NotImplementedError


class BusSide(_Side):
    """nats-server is shared; this is the actor(s) and the edge, all real processes."""

    side: Side = "bus"

    def __init__(
        self,
        workdir: Path,
        nats_url: str,
        tokens: int,
        rate: float,
        deploy: str,
        settings: Settings,
    ) -> None:
        super().__init__(workdir, tokens, rate)
        self.deploy = deploy
        self._nats_url = nats_url
        self._log_level = settings.log_level
        self._flush_ms = settings.stream_flush_ms
        self._recording = settings.recording
        self._port = free_port()
        self._edge: ChildProcess | None = None
        self._actors: list[ChildProcess] = []
        self._actor_stack = contextlib.AsyncExitStack()
        self._configs = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/ws?api_key={API_KEY}"

    def pids(self) -> dict[str, int]:
        pids = {p.name.split("-")[0]: p.pid for p in self._actors if p.pid is not None}
        if self._edge is not None and self._edge.pid is not None:
            pids["edge"] = self._edge.pid
        return pids

    def _write_config(self) -> Path:
        engine = {"backend": "bench", "model": "bench", "bench_tokens_per_s": self.rate}
        self._configs += 1
        path = self.workdir / f"{self.deploy}-{self._configs}.toml"
        path.write_text(
            _toml(
                {
                    "edge": {
                        "port": self._port,
                        "api_key": API_KEY,
                        "max_concurrent_connections": 8192,
                        "messages_per_minute": 0,
                        "cancels_per_minute": 0,
                        "stream_flush_ms": self._flush_ms,
                    },
                    "bus": {"url": self._nats_url},
                    "models": {"deploy": self.deploy},
                    "chat": {
                        **engine,
                        "max_out": self.tokens,
                        "bench_stamp": True,
                        "bench_abort_log": self.abort_log,
                    },
                    "tool": engine,
                    "actor": {"max_running": 8192},
                    "log": {"level": self._log_level, "format": "text"},
                    "recording": {"enabled": self._recording},
                }
            )
        )
        return path

    async def _start_actors(self, config: Path) -> None:
        await self._actor_stack.__aenter__()
        kinds = ["tool", "chat"] if self.deploy == "both" else [self.deploy]
        for kind in kinds:
            name = f"{kind}-{self._configs}"
            log = self._actor_stack.enter_context((self.workdir / f"{name}.log").open("ab"))
            proc = ChildProcess(
                name,
                [sys.executable, "-m", "actors", kind, "--config", str(config)],
                env=_child_env(),
                stdout=log,
                stderr=log,
                stop_timeout_s=10.0,
            )
            self._actors.append(await self._actor_stack.enter_async_context(proc))

    async def start(self) -> None:
        config = self._write_config()
        self._stack.push_async_callback(self._stop_actors)
        await self._start_actors(config)
        self._edge = await self._spawn(
            "edge", [sys.executable, "-m", "edge", "--config", str(config)]
        )
        await _wait_ready(self.url, [*self._actors, self._edge], self.workdir)

    async def _stop_actors(self) -> None:
        await self._actor_stack.aclose()
        self._actors.clear()

    async def restart(self, tokens: int, rate: float) -> None:
        """New actors at ``rate``; the edge (what is measured) keeps running."""
        self.tokens, self.rate = tokens, rate
        await self._stop_actors()
        self._actor_stack = contextlib.AsyncExitStack()
        await self._start_actors(self._write_config())
        assert self._edge is not None
        await _wait_ready(self.url, [*self._actors, self._edge], self.workdir)


class DirectSide(_Side):
    side: Side = "direct"

    def __init__(self, workdir: Path, tokens: int, rate: float) -> None:
        super().__init__(workdir, tokens, rate)
        self._port = free_port()
        self._server: ChildProcess | None = None
        self._server_stack = contextlib.AsyncExitStack()
        self._starts = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/ws"

    def pids(self) -> dict[str, int]:
        server = self._server
        return {"direct": server.pid} if server is not None and server.pid is not None else {}

    async def start(self) -> None:
        self._stack.push_async_callback(self._stop_server)
        await self._start_server()

    async def _start_server(self) -> None:
        await self._server_stack.__aenter__()
        self._starts += 1
        name = f"direct-{self._starts}"
        log = self._server_stack.enter_context((self.workdir / f"{name}.log").open("ab"))
        proc = ChildProcess(
            name,
            [
                sys.executable,
                "-m",
                "bench.direct_server",
                "--port",
                str(self._port),
                "--rate",
                str(self.rate),
                "--tokens",
                str(self.tokens),
                "--stamp",
                "--abort-log",
                self.abort_log,
            ],
            env=_child_env(),
            stdout=log,
            stderr=log,
            stop_timeout_s=10.0,
        )
        self._server = await self._server_stack.enter_async_context(proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while await http_status("127.0.0.1", self._port, "/healthz") != 200:
            if not proc.running or time.monotonic() > deadline:
                tail = (self.workdir / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"direct server did not start:\n{tail}")
            await asyncio.sleep(0.05)
        await _wait_ready(self.url, [proc], self.workdir)

    async def _stop_server(self) -> None:
        await self._server_stack.aclose()
        self._server = None

    async def restart(self, tokens: int, rate: float) -> None:
        self.tokens, self.rate = tokens, rate
        await self._stop_server()
        self._server_stack = contextlib.AsyncExitStack()
        await self._start_server()


# --- phases and the sweep ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    concurrency: tuple[int, ...]
    tokens: int
    rate: float
    duration_s: float
    warmup_s: float
    cancel_every: int
    cancel_after: int
    tput_sessions: int
    tput_tokens: int
    tput_rates: tuple[float, ...]
    both_concurrency: int
    log_level: str
    compression: bool
    stream_flush_ms: float
    profile_dir: str | None
    profile_concurrency: int
    max_foreign: float
    retries: int
    quiet_wait_s: float
    # The edge records every session to JetStream ([recording]): what recording costs.
    recording: bool = False


@dataclass(slots=True)
class _Host:
    """What every phase shares: nats-server."""

    nats_pid: int | None

    def pids(self) -> dict[str, int]:
        return {"nats": self.nats_pid} if self.nats_pid is not None else {}


async def _phase(
    side: _Side,
    name: str,
    sessions: int,
    settings: Settings,
    host: _Host,
    *,
    cancels: bool = True,
) -> PhaseResult:
    """Run one phase; again (up to ``retries`` times) while others loaded the machine.

    The machine is shared: a phase during which processes not ours used more than
    ``max_foreign`` percent of a core measured them, not us. The least disturbed
    attempt is kept, with ``attempts`` saying how many there were.
    """
    kept: PhaseResult | None = None
    for attempt in range(1, settings.retries + 2):
        await _wait_quiet(name, settings, host)
        result = await _phase_once(side, name, sessions, settings, host, cancels=cancels)
        result.attempts = attempt
        foreign = result.cpu_percent.get("foreign", 0.0)
        if kept is None or foreign < kept.cpu_percent.get("foreign", 0.0):
            kept = result
        if foreign <= settings.max_foreign:
            break
        if attempt <= settings.retries:
            sys.stderr.write(f"{name}: others used {foreign:.0f}% CPU; running it again\n")
            await asyncio.sleep(2.0)
    assert kept is not None
    return kept


async def _wait_quiet(name: str, settings: Settings, host: _Host) -> None:
    """Wait (at most ``quiet_wait_s``) until the machine idles.

    Our own processes idle between phases, so what is busy now is someone else.
    """
    deadline = time.monotonic() + settings.quiet_wait_s
    waited = False
    while True:
        before = _cpu_snapshot({})
        await asyncio.sleep(0.5)
        busy = _cpu_percent(before, _cpu_snapshot({}), 0.5).get("machine", 0.0)
        if busy <= settings.max_foreign or time.monotonic() >= deadline:
            if waited:
                sys.stderr.write(f"{name}: others at {busy:.0f}% CPU, going on\n")
            return
        if not waited:
            sys.stderr.write(f"{name}: machine busy ({busy:.0f}% CPU), waiting for it\n")
            waited = True


async def _phase_once(
    side: _Side,
    name: str,
    sessions: int,
    settings: Settings,
    host: _Host,
    *,
    cancels: bool,
) -> PhaseResult:
    """Run the load client in its own process against ``side``; its result."""
    out = side.workdir / f"{name}.result.json"
    spec = PhaseSpec(
        name=name,
        side=side.side,
        deploy=side.deploy,
        url=side.url,
        sessions=sessions,
        tokens=side.tokens,
        rate=side.rate,
        warmup_s=settings.warmup_s,
        duration_s=settings.duration_s,
        cancel_every=settings.cancel_every if cancels else 0,
        cancel_after=settings.cancel_after,
        engine_steps=side.engine_steps,
        compression=settings.compression,
        abort_log=side.abort_log,
        pids={**side.pids(), **host.pids()},
        out=str(out),
    )
    spec_path = side.workdir / f"{name}.spec.json"
    spec_path.write_bytes(msgspec.json.encode(spec))
    log_path = side.workdir / f"{name}.client.log"
    with log_path.open("wb") as log:
        client = ChildProcess(
            f"client-{name}",
            [sys.executable, "-m", "bench.overhead", "--client", str(spec_path)],
            env=_child_env(),
            stdout=log,
            stderr=log,
        )
        async with client:
            limit = settings.warmup_s + settings.duration_s + 60.0 + sessions * 0.1
            async with asyncio.timeout(limit):
                code = await client.wait()
    if code != 0 or not out.exists():
        raise RuntimeError(f"client of {name} failed ({code}):\n{log_path.read_text()[-3000:]}")
    return msgspec.json.decode(out.read_bytes(), type=PhaseResult)


async def _ping_rtt(url: str, compression: bool) -> dict[str, float]:
    """``ping`` -> ``pong`` round trips, back to back and 5 ms apart, in microseconds.

    What one process hop costs on this machine, busy and waking from idle: the bus
    path has six such hops to the first token where the direct server has two.
    """
    ping = json.dumps({"type": "ping"})
    result: dict[str, float] = {}
    async with connect(
        url, proxy=None, compression="deflate" if compression else None, close_timeout=1.0
    ) as ws:
        for label, count, gap_s in (("busy", 2000, 0.0), ("idle", 200, 0.005)):
            samples: list[int] = []
            for _ in range(count):
                sent = time.monotonic_ns()
                await ws.send(ping)
                await ws.recv()
                samples.append(time.monotonic_ns() - sent)
                if gap_s:
                    await asyncio.sleep(gap_s)
            summary = summarize([v / 1e3 for v in samples])
            assert summary is not None
            result[f"{label}_p50"] = round(summary.p50, 1)
            result[f"{label}_p99"] = round(summary.p99, 1)
    return result


def _passes(result: PhaseResult) -> bool:
    """One-way p99 within the bound, no errors, and at least 90% of the offered rate.

    The last condition keeps a saturated side from passing on low one-way numbers
    while its engine falls behind (tokens late at the source, not on the way).
    """
    one_way = result.one_way_ms
    return (
        one_way is not None
        and one_way["p99"] <= P99_BOUND_MS
        and not result.errors
        and result.tokens_per_s >= DELIVERED_SHARE * result.offered_tokens_per_s
    )


async def _profile(side: BusSide, settings: Settings, host: _Host) -> dict[str, Any]:
    """A bus phase with py-spy on the edge and the actor; where their time goes."""
    assert settings.profile_dir is not None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir = Path(settings.profile_dir)  # made by main()
    targets = {name: pid for name, pid in side.pids().items() if name in ("edge", "chat")}
    seconds = int(settings.warmup_s + settings.duration_s + 1)
    async with contextlib.AsyncExitStack() as stack:
        spies: list[ChildProcess] = []
        for name, pid in targets.items():
            log = stack.enter_context((side.workdir / f"py-spy-{name}.log").open("wb"))
            spy = ChildProcess(
                f"py-spy-{name}",
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(out_dir / f"{name}.collapsed.txt"),
                ],
                stdout=log,
                stderr=log,
            )
            spies.append(await stack.enter_async_context(spy))
        await asyncio.sleep(0.5)  # py-spy attaches
        name = f"profile-c{settings.profile_concurrency}"
        result = await _phase(side, name, settings.profile_concurrency, settings, host)
        # py-spy writes its output when its duration ends; stopping it earlier loses it.
        async with asyncio.timeout(seconds + 30):
            for spy in spies:
                await spy.wait()
    summary: dict[str, Any] = {"phase": result}
    for name in targets:
        path = out_dir / f"{name}.collapsed.txt"
        if path.exists():
            summary[name] = summarize_profile(path.read_text())
            (out_dir / f"{name}-top.txt").write_text(render_profile(name, summary[name]))
    return summary


# What a sample's leaf frame spends the time on, first match wins: (function, path
# prefix) -> area. C code (uvloop, zlib, msgspec, syscalls) shows as its Python caller.
_AREAS: Final = (
    ("Runner.run", "", "event loop in C (uvloop: epoll, socket reads, timers, callbacks)"),
    ("Connection.send_data", "", "socket writes: WebSocket frames"),
    ("StreamWriter.writelines", "", "socket writes: NATS (nats-py flusher)"),
    ("", "websockets/extensions/permessage_deflate", "permessage-deflate (zlib)"),
    ("", "websockets/", "websockets (framing, send/recv)"),
    ("", "nats/", "nats-py (parse, subscriptions, publish)"),
    ("", "logging/", "logging"),
    ("", "bus/logs", "logging"),
    ("", "prometheus_client/", "prometheus metrics"),
    ("", "edge/", "edge code (protocol, turn machine, outbox)"),
    ("", "actors/engines/", "bench engine (pacing)"),
    ("", "actors/", "actor code (service, worker, emitter)"),
    ("", "bus/", "bus codec (msgspec)"),
    ("", "asyncio/", "asyncio in Python (tasks, events, queues, timeouts)"),
)
_FRAME: Final = re.compile(r"(.*) \((.*?)(?::\d+)?\)$")


def _split_frame(frame: str) -> tuple[str, str]:
    """``func (path:line)`` -> (``func``, ``path``)."""
    match = _FRAME.match(frame)
    return (match.group(1), match.group(2)) if match else (frame, "")


def _area(frame: str) -> str:
    func, path = _split_frame(frame)
    for want_func, prefix, area in _AREAS:
        if (want_func and func == want_func) or (prefix and path.startswith(prefix)):
            return area
    return "other"


def _frame_key(frame: str) -> str:
    """``func (path:line)`` -> ``func (path)``, so the lines of one function merge."""
    func, path = _split_frame(frame)
    return f"{func} ({path})" if path else func


def summarize_profile(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares per function and self share per category, from py-spy raw."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_counts[_frame_key(leaf)] += count
        for key in {_frame_key(f) for f in frames}:
            incl_counts[key] += count
        categories[_area(leaf)] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "categories": share(categories),
        "self": share(self_counts),
        "inclusive": share(incl_counts),
    }


def render_profile(name: str, summary: Mapping[str, Any]) -> str:
    lines = [f"{name}: {summary['samples']} samples (py-spy, busy samples only)", "", "by area:"]
    lines += [f"  {pct:5.1f}%  {what}" for what, pct in summary["categories"]]
    lines += ["", "self time:"]
    lines += [f"  {pct:5.1f}%  {what}" for what, pct in summary["self"]]
    lines += ["", "inclusive time:"]
    lines += [f"  {pct:5.1f}%  {what}" for what, pct in summary["inclusive"]]
    return "\n".join(lines) + "\n"


def conditions(settings: Settings) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    import websockets

    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loop": loop,
        "websockets": websockets.__version__,
        "msgspec": msgspec.__version__,
        "kernel": platform.release(),
        "load_before": " ".join(load),
        "rate_per_session": settings.rate,
        "tokens_per_turn": settings.tokens,
        "duration_s": settings.duration_s,
        "warmup_s": settings.warmup_s,
        "cancel": f"every {settings.cancel_every}th turn after {settings.cancel_after} tokens",
        "log_level": settings.log_level,
        "compression": "permessage-deflate" if settings.compression else "none",
        "stream_flush_ms": settings.stream_flush_ms,
        "recording": settings.recording,
    }


def _added(bus: PhaseResult, direct: PhaseResult) -> dict[str, float | None]:
    """bus - direct and bus / direct for the headline percentiles."""
    out: dict[str, float | None] = {}
    for metric in ("ttft_ms", "one_way_ms"):
        a, b = getattr(bus, metric), getattr(direct, metric)
        for q in ("p50", "p99"):
            key = f"{metric[:-3]}_{q}"
            if a is None or b is None:
                out[f"added_{key}_ms"] = out[f"ratio_{key}"] = None
                continue
            out[f"added_{key}_ms"] = round(a[q] - b[q], 3)
            out[f"ratio_{key}"] = round(a[q] / b[q], 2) if b[q] > 0 else None
    return out


async def run_benchmark(settings: Settings, out: TextIO) -> dict[str, Any]:
    """The whole run: latency sweep, profile, throughput ladder, deploy=both; one report."""
    report: dict[str, Any] = {"conditions": conditions(settings), "settings": _asdict(settings)}
    out.write(render_conditions(report["conditions"]))
    out.flush()
    with tempfile.TemporaryDirectory(prefix="yap-overhead-") as tmp:
        workdir = Path(tmp)
        async with NatsServer(workdir / "nats") as nats:
            host = _Host(nats.pid)
            bus = BusSide(workdir, nats.url, settings.tokens, settings.rate, "chat", settings)
            direct = DirectSide(workdir, settings.tokens, settings.rate)
            async with bus, direct:
                await _wait_quiet("ping", settings, host)
                report["ws_rtt_us"] = rtt = await _ping_rtt(direct.url, settings.compression)
                out.write(render_rtt(rtt) + render_header())
                latency = []
                for sessions in settings.concurrency:
                    a = await _phase(bus, f"bus-c{sessions}", sessions, settings, host)
                    b = await _phase(direct, f"direct-c{sessions}", sessions, settings, host)
                    row = {"sessions": sessions, "bus": a, "direct": b, **_added(a, b)}
                    latency.append(row)
                    out.write(render_row(row))
                    out.flush()
                report["latency"] = latency
                report["profile"] = (
                    await _profile(bus, settings, host) if settings.profile_dir else None
                )
                report["throughput"] = await _ladder(bus, direct, settings, host, out)
            if settings.both_concurrency > 0:
                both = BusSide(workdir, nats.url, settings.tokens, settings.rate, "both", settings)
                async with both:
                    report["both"] = await _phase(
                        both,
                        f"both-c{settings.both_concurrency}",
                        settings.both_concurrency,
                        settings,
                        host,
                    )
            else:
                report["both"] = None
    report["targets"] = _targets(report, settings)
    out.write(render_summary(report))
    out.flush()
    return report


async def _ladder(
    bus: BusSide, direct: DirectSide, settings: Settings, host: _Host, out: TextIO
) -> dict[str, Any]:
    """Raise the per-session rate until each side fails the bound at two steps in a row.

    One failure does not end a side: at low load the p99 is set by a few tail
    events (a CPU waking from idle, a GC pause), so the next step may pass again.
    The side's figure is its best passing step; ``first_failure`` says where it
    first failed.
    """
    steps: list[dict[str, Any]] = []
    best: dict[str, float | None] = {"bus": None, "direct": None}
    first_failure: dict[str, float | None] = {"bus": None, "direct": None}
    failures: dict[str, int] = {"bus": 0, "direct": 0}
    live: dict[Side, _Side] = {"bus": bus, "direct": direct}
    for rate in settings.tput_rates:
        step: dict[str, Any] = {"rate": rate, "offered": settings.tput_sessions * rate}
        for name, side in list(live.items()):
            await side.restart(settings.tput_tokens, rate)
            result = await _phase(
                side,
                f"tput-{name}-r{rate:g}",
                settings.tput_sessions,
                settings,
                host,
                cancels=False,
            )
            step[name] = result
            if _passes(result):
                best[name] = max(best[name] or 0.0, result.tokens_per_s)
                failures[name] = 0
                continue
            if first_failure[name] is None:
                first_failure[name] = step["offered"]
            failures[name] += 1
            if failures[name] >= LADDER_FAILURES:
                del live[name]  # clearly past the bound: higher rates only get worse
        steps.append(step)
        out.write(render_ladder_step(step))
        out.flush()
        if not live:
            break
    return {
        "sessions": settings.tput_sessions,
        "tokens": settings.tput_tokens,
        "bound_p99_ms": P99_BOUND_MS,
        "steps": steps,
        "max_tokens_per_s": best,
        "first_failure_offered": first_failure,
    }


def _targets(report: Mapping[str, Any], settings: Settings) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    row = next((r for r in report["latency"] if r["sessions"] == TARGET_SESSIONS), None)
    if row is not None:
        targets.append(_target("added TTFT p50 @16", row["added_ttft_p50_ms"], TARGET_TTFT_P50_MS))
        targets.append(_target("added TTFT p99 @16", row["added_ttft_p99_ms"], TARGET_TTFT_P99_MS))
        cancel = row["bus"].cancel_to_abort_ms
        targets.append(
            _target(
                "cancel->abort p99 @16", cancel["p99"] if cancel else None, TARGET_CANCEL_P99_MS
            )
        )
    best = report["throughput"]["max_tokens_per_s"]["bus"]
    targets.append(
        {
            "name": f"edge tokens/s with one-way p99 <= {P99_BOUND_MS:g} ms",
            "target": TARGET_TOKENS_PER_S,
            "measured": best,
            "met": best is not None and best >= TARGET_TOKENS_PER_S,
        }
    )
    return targets


def _target(name: str, measured: float | None, bound: float) -> dict[str, Any]:
    return {
        "name": name,
        "target": f"< {bound:g} ms",
        "measured": measured,
        "met": measured is not None and measured < bound,
    }


def _asdict(settings: Settings) -> dict[str, Any]:
    return {k: getattr(settings, k) for k in settings.__dataclass_fields__}


# --- output ------------------------------------------------------------------------


def render_conditions(cond: Mapping[str, Any]) -> str:
    return (
        f"machine: {cond['cpu_model']}, {cond['cores']} cores, load {cond['load_before']}; "
        f"Python {cond['python']}, {cond['loop']}, websockets {cond['websockets']}, "
        f"msgspec {cond['msgspec']}\n"
        f"engine: bench, {cond['rate_per_session']:g} tokens/s per session, "
        f"{cond['tokens_per_turn']} tokens per turn; window {cond['duration_s']:g} s after "
        f"{cond['warmup_s']:g} s warm-up; cancel {cond['cancel']}; logs {cond['log_level']}; "
        f"ws compression {cond['compression']}; edge flush {cond['stream_flush_ms']:g} ms\n"
    )


def render_header() -> str:
    return (
        f"{'sess':>4} {'side':<6} {'turns':>5} {'TTFT p50':>8} {'p99':>6} {'emit1':>6} "
        f"{'1way p50':>8} {'p99':>6} {'lag p99':>7} {'cxl p50':>7} {'p99':>6} "
        f"{'tok/s':>7} {'tok/frm':>7} {'us/tok':>6} "
        f"{'CPU% edge/actor/nats/direct/client/foreign/steal':>50}\n"
    )


def render_rtt(rtt: Mapping[str, float]) -> str:
    return (
        "WebSocket ping RTT to the direct server (two process hops): back to back "
        f"p50 {rtt['busy_p50']:.0f} us p99 {rtt['busy_p99']:.0f} us; 5 ms apart (CPUs idle "
        f"in between) p50 {rtt['idle_p50']:.0f} us p99 {rtt['idle_p99']:.0f} us\n\n"
    )


def _p(dist: Mapping[str, float] | None, q: str, width: int) -> str:
    return f"{dist[q]:>{width}.2f}" if dist else f"{'-':>{width}}"


def _cpu(result: PhaseResult) -> str:
    cpu = result.cpu_percent
    names = ("edge", "chat", "nats", "direct", "client", "foreign", "steal")
    return "/".join(f"{cpu[n]:.0f}" if n in cpu else "-" for n in names)


def _us(result: PhaseResult) -> str:
    """CPU per token of the process that forwards to clients: the edge, or the direct server."""
    value = result.cpu_us_per_token("edge" if result.side == "bus" else "direct")
    return "-" if value is None else f"{value:.0f}"


def render_result(result: PhaseResult) -> str:
    per_frame = result.tokens_received / result.token_frames if result.token_frames else 0.0
    errors = " ".join(f"{k}={v}" for k, v in result.errors.items())
    return (
        f"{result.sessions:>4} {result.side if result.deploy != 'both' else 'both':<6} "
        f"{result.turns:>5} {_p(result.ttft_ms, 'p50', 8)} {_p(result.ttft_ms, 'p99', 6)} "
        f"{_p(result.first_emit_ms, 'p50', 6)} "
        f"{_p(result.one_way_ms, 'p50', 8)} {_p(result.one_way_ms, 'p99', 6)} "
        f"{_p(result.engine_lag_ms, 'p99', 7)} "
        f"{_p(result.cancel_to_abort_ms, 'p50', 7)} {_p(result.cancel_to_abort_ms, 'p99', 6)} "
        f"{result.tokens_per_s:>7.0f} {per_frame:>7.2f} {_us(result):>6} {_cpu(result):>50}"
        f"{'  errors: ' + errors if errors else ''}\n"
    )


def render_row(row: Mapping[str, Any]) -> str:
    def fmt(key: str, unit: str) -> str:
        value = row[key]
        return "-" if value is None else f"{value:+.2f}{unit}" if unit else f"{value:.2f}x"

    return (
        render_result(row["bus"])
        + render_result(row["direct"])
        + f"{'':>4} added  TTFT p50 {fmt('added_ttft_p50_ms', ' ms')} "
        f"p99 {fmt('added_ttft_p99_ms', ' ms')}; one-way p50 {fmt('added_one_way_p50_ms', ' ms')} "
        f"p99 {fmt('added_one_way_p99_ms', ' ms')}; ratio a/b TTFT p50 "
        f"{fmt('ratio_ttft_p50', '')} p99 {fmt('ratio_ttft_p99', '')}, one-way p50 "
        f"{fmt('ratio_one_way_p50', '')} p99 {fmt('ratio_one_way_p99', '')}\n"
    )


def render_ladder_step(step: Mapping[str, Any]) -> str:
    lines = [f"throughput: {step['rate']:g} tokens/s x sessions = {step['offered']:g} offered"]
    for side in ("bus", "direct"):
        if side in step:
            lines.append(render_result(step[side]).rstrip("\n"))
    return "\n".join(lines) + "\n"


def render_summary(report: Mapping[str, Any]) -> str:
    lines = [""]
    if report.get("both") is not None:
        lines.append("deploy=both (tool hop, then chat):")
        lines.append(render_result(report["both"]).rstrip("\n"))
    best = report["throughput"]["max_tokens_per_s"]
    first = report["throughput"]["first_failure_offered"]
    lines.append(
        f"max tokens/s with one-way p99 <= {P99_BOUND_MS:g} ms: bus {best['bus']} (first "
        f"failed at {first['bus']} offered), direct {best['direct']} (first failed at "
        f"{first['direct']} offered)"
    )
    for target in report["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        lines.append(
            f"target {target['name']}: {target['target']}, measured {target['measured']} -> "
            f"{verdict}"
        )
    if report.get("profile"):
        for name in ("edge", "chat"):
            if name in report["profile"]:
                lines.append(render_profile(name, report["profile"][name]))
    return "\n".join(lines) + "\n"


def plot_report(report: Mapping[str, Any], path: str) -> None:
    """Four panels: TTFT, one-way and cancel->abort vs sessions; p99 vs tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    figure, axes = plt.subplots(2, 2, figsize=(10, 7), layout="constrained")
    rows = report["latency"]
    sessions = [row["sessions"] for row in rows]
    colors = {"bus": "#c44e52", "direct": "#4c72b0"}
    panels = (
        (axes[0][0], "ttft_ms", "time to first token (ms)"),
        (axes[0][1], "one_way_ms", "engine emit -> client, per token (ms)"),
        (axes[1][0], "cancel_to_abort_ms", "cancel sent -> engine abort (ms)"),
    )
    for axis, metric, title in panels:
        for side in ("bus", "direct"):
            for q, style in (("p50", "-o"), ("p99", "--s")):
                values = [(getattr(row[side], metric) or {}).get(q, float("nan")) for row in rows]
                axis.plot(sessions, values, style, color=colors[side], label=f"{side} {q}")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(sessions, [str(s) for s in sessions])
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_xlabel("sessions")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    axis = axes[1][1]
    ladder = report["throughput"]
    for side in ("bus", "direct"):
        points = [
            (step[side].tokens_per_s, step[side].one_way_ms["p99"])
            for step in ladder["steps"]
            if side in step and step[side].one_way_ms
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, "-o", color=colors[side], label=f"{side} one-way p99")
    axis.axhline(P99_BOUND_MS, color="gray", linestyle=":", label=f"{P99_BOUND_MS:g} ms")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    axis.set_xlabel(f"tokens/s delivered ({ladder['sessions']} sessions)")
    axis.set_title("throughput vs one-way p99 (ms)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    cond = report["conditions"]
    figure.suptitle(
        f"yap-bus overhead: (a) bus vs (b) direct, {cond['cpu_model']} x{cond['cores']}, "
        f"{cond['rate_per_session']:g} tok/s/session, {cond['tokens_per_turn']} tokens/turn",
        fontsize=10,
    )
    figure.savefig(path, dpi=80)
    plt.close(figure)


def load_report(path: str) -> dict[str, Any]:
    """A ``--json`` report read back, its phases as :class:`PhaseResult` again."""
    report: dict[str, Any] = json.loads(Path(path).read_text())
    for row in report["latency"]:
        for side in ("bus", "direct"):
            row[side] = msgspec.convert(row[side], PhaseResult)
    for step in report["throughput"]["steps"]:
        for side in ("bus", "direct"):
            if side in step:
                step[side] = msgspec.convert(step[side], PhaseResult)
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


# --- entrypoint ----------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def parse_args(argv: Sequence[str]) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead",
        description="Bus overhead: edge + NATS + actor vs a direct server, same bench engine.",
    )
    parser.add_argument("--concurrency", type=_ints, default=(1, 16, 64, 256))
    parser.add_argument("--tokens", type=int, default=32, help="tokens per turn")
    parser.add_argument("--rate", type=float, default=200.0, help="tokens/s per session")
    parser.add_argument("--duration", type=float, default=5.0, help="measured s per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured s per phase")
    parser.add_argument("--cancel-every", type=int, default=4, help="cancel every K-th turn")
    parser.add_argument("--cancel-after", type=int, default=3, help="...after T tokens")
    parser.add_argument("--tput-sessions", type=int, default=64)
    parser.add_argument("--tput-tokens", type=int, default=200, help="tokens per ladder turn")
    parser.add_argument(
        "--tput-rates",
        type=_floats,
        default=(6.25, 12.5, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0, 600.0),
        help="per-session tokens/s of the ladder's steps ('' skips the ladder)",
    )
    parser.add_argument("--both-concurrency", type=int, default=16, help="0 skips deploy=both")
    parser.add_argument("--log-level", default="INFO", help="edge and actor log level")
    parser.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="what the client offers: permessage-deflate (websockets' default) or nothing",
    )
    parser.add_argument(
        "--stream-flush-ms", type=float, default=0.0, help="the edge's STREAM_FLUSH_MS"
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy the edge and actor into DIR")
    parser.add_argument("--profile-concurrency", type=int, default=64)
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=25.0,
        help="re-run a phase when others used more than this %% of a core meanwhile",
    )
    parser.add_argument("--retries", type=int, default=2, help="re-runs per phase at most")
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, help="s to wait for a busy machine per phase"
    )
    parser.add_argument("--json", metavar="PATH", help="write the whole report as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw the report (matplotlib)")
    parser.add_argument(
        "--from-json", metavar="PATH", help="run nothing: draw --plot from a --json report"
    )
    parser.add_argument(
        "--recording", action="store_true", help="the edge records every session (JetStream)"
    )
    parser.add_argument("--client", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    if args.duration <= 0 or args.warmup < 0 or args.tokens < 1 or args.rate <= 0:
        parser.error("--duration, --tokens and --rate must be positive")
    if args.cancel_every and args.cancel_after >= args.tokens:
        parser.error("--cancel-after must be below --tokens")
    settings = Settings(
        concurrency=args.concurrency,
        tokens=args.tokens,
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        cancel_every=args.cancel_every,
        cancel_after=args.cancel_after,
        tput_sessions=args.tput_sessions,
        tput_tokens=args.tput_tokens,
        tput_rates=args.tput_rates,
        both_concurrency=args.both_concurrency,
        log_level=args.log_level,
        compression=args.compression == "deflate",
        stream_flush_ms=args.stream_flush_ms,
        profile_dir=args.profile,
        profile_concurrency=args.profile_concurrency,
        max_foreign=args.max_foreign,
        retries=args.retries,
        quiet_wait_s=args.quiet_wait,
        recording=args.recording,
    )
    return settings, args


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    settings, args = parse_args(argv)
    if args.client:
        _client_main(args.client)
        return
    if args.from_json:
        if not args.plot:
            sys.exit("--from-json needs --plot")
        plot_report(load_report(args.from_json), args.plot)
        return
    if settings.profile_dir:
        Path(settings.profile_dir).mkdir(parents=True, exist_ok=True)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        report = runner.run(run_benchmark(settings, sys.stdout))
    if args.json:
        Path(args.json).write_text(json.dumps(report, default=_json_default, indent=1) + "\n")
    if args.plot:
        plot_report(report, args.plot)


if __name__ == "__main__":
    main()
