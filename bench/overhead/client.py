"""The load client, its own process: N sessions of back-to-back turns, timed."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bench.overhead.cpu import cpu_percent, cpu_snapshot
from bench.overhead.spec import (
    ABORT_LOG_GRACE_S,
    CANCEL,
    STAMP,
    TURN_TIMEOUT_S,
    PhaseResult,
    PhaseSpec,
    dist,
)
from bus.loop import loop_factory

__all__ = ["client_main", "run_client"]

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
                        await ws.send(CANCEL)
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
        before = cpu_snapshot(pids)
        window_started = time.monotonic()
        await asyncio.sleep(max(rec.window_end - time.monotonic_ns(), 0) / 1e9)
        after = cpu_snapshot(pids)
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
        ttft_ms=dist(rec.ttft),
        ttft_excess_ms=dist(ttft_excess),
        first_emit_ms=dist(rec.first_emit),
        one_way_ms=dist(rec.one_way),
        engine_lag_ms=dist(rec.lag),
        cancel_to_abort_ms=dist(cancel_to_abort),
        cancel_to_done_ms=dist(rec.cancel_done),
        cpu_percent=cpu_percent(before, after, wall_s),
    )


def client_main(spec_path: str) -> None:
    spec = msgspec.json.decode(Path(spec_path).read_bytes(), type=PhaseSpec)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(run_client(spec))
    Path(spec.out).write_bytes(msgspec.json.encode(result))
