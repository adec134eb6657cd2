"""``python -m replay list|show|export|import|replay``: recorded sessions, read and re-driven.

Reading commands (list, show, export, and replay from the stream) never change the
stream: they read through ephemeral ordered consumers. ``import`` writes a file's
sessions into a server's stream. Every failure is one line on stderr and a
non-zero exit: 2 for errors (a missing session, a corrupt file, an unknown format
version, an unreachable server or edge), 1 when ``replay --strict`` finds a
mismatch or a latency regression.

The bus: ``--nats URL`` (env ``YAP_NATS_URL``), as ``YAP_BUS_USER`` /
``YAP_BUS_PASSWORD``; without them, the replay user's access file a running
``just up`` writes (``.yap/run/replay.json``). Environment is read in ``main`` only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import msgspec

from bus.loop import loop_factory
from clients.bench import (
    BenchConfig,
    BenchReport,
    IterationOutcome,
    ProgressBar,
    check_plot,
    plot_report,
)
from clients.bench import render_text as render_bench
from clients.turn import BargeInOutcome, TurnResult
from replay.compare import SessionReport, Thresholds, compare, render_report, summary_line
from replay.driver import ObservedTurn, Pacing, SessionDriver, SessionRun, fresh_session_id, restore
from replay.errors import ReplayError, SessionNotFound
from replay.events import Session
from replay.jsonl import read_sessions, write_sessions
from replay.store import BusTarget, RecordingStore, connect
from replay.timeline import Timeline, build_timeline, outcome_word, render_list, render_show

__all__ = ["amain", "main", "parse_args"]

DEFAULT_NATS: Final = "nats://127.0.0.1:4222"
DEFAULT_API_KEY: Final = "yap_token"
REPLAY_ACCESS: Final = Path(".yap/run/replay.json")
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class _Access(msgspec.Struct):
    url: str
    user: str | None = None
    password: str | None = None


def parse_since(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 time (UTC if it names no zone).

    Raises:
        ReplayError: neither.
    """
    now = now or datetime.datetime.now(tz=datetime.UTC)
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now - datetime.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(f"--since {text!r}: expected 30m, 2h, 1d or an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m replay",
        description="Recorded sessions: list, show, export, import and replay them.",
    )
    parser.add_argument(
        "--nats", help=f"nats-server holding the recordings (default {DEFAULT_NATS})"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="recorded sessions, their turns and outcomes")
    listing.add_argument("--since", help="only sessions since (30m, 2h, 1d, or ISO time)")
    listing.add_argument("--json", action="store_true")

    show = commands.add_parser("show", help="a session's timeline, with relative times")
    show.add_argument("source", help="session id, or an export file")

    export = commands.add_parser("export", help="sessions as JSON Lines")
    export.add_argument("sessions", nargs="*", help="session ids")
    export.add_argument("--since", help="every session since (30m, 2h, 1d, or ISO time)")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")

    imports = commands.add_parser("import", help="republish an export file into a server's stream")
    imports.add_argument("file")
    imports.add_argument("--as", dest="as_id", help="store the (single) session under this id")

    replay = commands.add_parser("replay", help="re-drive a live edge as the client did")
    replay.add_argument("sources", nargs="+", help="session ids and/or export files")
    replay.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="the edge's WebSocket URL")
    replay.add_argument(
        "--target-nats", help="the target system's bus, for restoring settings (default --nats)"
    )
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="scale recorded pauses by 1/N")
    pace.add_argument("--asap", action="store_true", help="no pauses between turns")
    replay.add_argument("--strict", action="store_true", help="exit 1 on any mismatch")
    replay.add_argument(
        "--warmup", action="store_true", help="one unscored pass first (equal cache states)"
    )
    replay.add_argument("--max-slowdown", type=float, default=0.5, help="strict: allowed ratio")
    replay.add_argument("--slack-ms", type=float, default=50.0, help="strict: allowed ms on top")
    replay.add_argument("--fanout", type=int, default=0, help="each session N times at once")
    replay.add_argument("--plot", help="fanout: latency histograms to this file")
    replay.add_argument("--timeout", type=float, default=60.0, help="longest wait for a reply (s)")
    replay.add_argument(
        "--no-restore", action="store_true", help="do not restore the recorded seed, clock, persona"
    )
    replay.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(list(argv))
    if args.command == "replay":
        if args.speed <= 0:
            parser.error("--speed must be positive")
        if args.fanout < 0:
            parser.error("--fanout must not be negative")
        if args.fanout and args.strict:
            parser.error("--strict compares one replay at a time; drop --fanout")
        check_plot(parser, args.plot)
    if args.command == "export" and not args.sessions and not args.since:
        parser.error("export needs session ids or --since")
    return args


def _bus(url: str | None, env: Mapping[str, str]) -> BusTarget:
    access: _Access | None = None
    try:
        access = msgspec.json.decode(REPLAY_ACCESS.read_bytes(), type=_Access)
    except (OSError, msgspec.DecodeError):
        access = None
    url = url or env.get("YAP_NATS_URL") or (access.url if access else DEFAULT_NATS)
    user = env.get("YAP_BUS_USER") or (access.user if access else None)
    password = env.get("YAP_BUS_PASSWORD") or (access.password if access else None)
    return BusTarget(url, user, password)


def _is_file(source: str) -> bool:
    return Path(source).is_file()


async def _load(source: str, store: RecordingStore | None) -> list[Session]:
    """A file's sessions, or the recorded session of that id."""
    if await asyncio.to_thread(_is_file, source):
        return await asyncio.to_thread(read_sessions, source)
    if store is None:
        raise SessionNotFound(f"{source!r} is no file and no bus was given")
    return [await store.session(source)]


async def amain(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    source_bus = _bus(args.nats, env)
    sources = [*getattr(args, "sources", ()), *([args.source] if args.command == "show" else [])]
    files = [await asyncio.to_thread(_is_file, source) for source in sources]
    needs_stream = args.command in ("list", "export", "import") or not all(files)
    nc = await connect(source_bus) if needs_stream else None
    try:
        store = RecordingStore(nc) if nc is not None else None
        if store is not None and args.command != "import":
            await store.check()
        match args.command:
            case "list":
                assert store is not None
                since = parse_since(args.since) if args.since else None
                timelines = [
                    build_timeline(s) for s in await store.sessions(since, records_only=True)
                ]
                out.write(_list_json(timelines) if args.json else render_list(timelines) + "\n")
            case "show":
                for session in await _load(args.source, store):
                    out.write(render_show(build_timeline(session)) + "\n")
            case "export":
                assert store is not None
                wanted = list(dict.fromkeys(args.sessions))
                if args.since:
                    # Whole sessions: one that began before the time is not cut in two.
                    active = await store.sessions(parse_since(args.since), records_only=True)
                    wanted += [s.session_id for s in active if s.session_id not in wanted]
                sessions = [await store.session(session_id) for session_id in wanted]
                if args.output:
                    buffer = io.StringIO()
                    write_sessions(sessions, buffer)
                    await asyncio.to_thread(
                        Path(args.output).write_text, buffer.getvalue(), encoding="utf-8"
                    )
                    err.write(f"exported {len(sessions)} session(s) to {args.output}\n")
                else:
                    write_sessions(sessions, out)
            case "import":
                assert store is not None
                sessions = await asyncio.to_thread(read_sessions, args.file)
                if args.as_id and len(sessions) != 1:
                    raise ReplayError("--as needs a file with exactly one session")
                for session in sessions:
                    count = await store.import_session(session, session_id=args.as_id)
                    out.write(f"imported {args.as_id or session.session_id}: {count} events\n")
            case "replay":
                sessions = [s for source in args.sources for s in await _load(source, store)]
                return await _replay(args, env, sessions, source_bus, out, err)
    finally:
        if nc is not None:
            await nc.close()
    return 0


async def _replay(
    args: argparse.Namespace,
    env: Mapping[str, str],
    sessions: list[Session],
    source_bus: BusTarget,
    out: TextIO,
    err: TextIO,
) -> int:
    timelines = [build_timeline(s) for s in sessions]
    pacing = Pacing(speed=args.speed, asap=args.asap, timeout_s=args.timeout)
    api_key = env.get("YAP_API_KEY", DEFAULT_API_KEY)
    target_nc = None
    if not args.no_restore:
        target = _bus(args.target_nats, env) if args.target_nats else source_bus
        target_nc = await connect(target)
    try:
        copies = max(args.fanout, 1)
        total = sum(len(t.turns) for t in timelines) * (copies + (1 if args.warmup else 0))
        progress = ProgressBar(max(total, 1), err, enabled=err.isatty())

        def on_turn(turn: ObservedTurn) -> None:
            progress.advance(_outcome(turn.index, turn))

        async def drive(timeline: Timeline, delay_s: float = 0.0) -> SessionRun:
            if delay_s > 0:
                await asyncio.sleep(delay_s)  # the recorded arrival time, scaled
            session_id = fresh_session_id()
            if target_nc is not None:
                await restore(target_nc, session_id, timeline)
            driver = SessionDriver(
                timeline, args.url, api_key, pacing, session_id=session_id, on_turn=on_turn
            )
            return await driver.drive()

        if args.warmup:
            for timeline in timelines:
                await drive(timeline)
        if args.fanout:
            began = time.monotonic()
            origin = min(t.session.started_ns for t in timelines)
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(drive(t, _arrival_s(t, origin, pacing)))
                        for t in timelines
                        for _ in range(copies)
                    ]
            except* ReplayError as failed:
                raise failed.exceptions[0] from None
            progress.close()
            report = _bench_report(args, api_key, [task.result() for task in tasks], began)
            out.write(render_bench(report) + "\n")
            if args.plot:
                plot_report(report, args.plot)
            return 0
        thresholds = Thresholds(max_slowdown=args.max_slowdown, slack_ms=args.slack_ms)
        reports = []
        for timeline in timelines:
            run = await drive(timeline)
            reports.append(compare(timeline, run, thresholds))
        progress.close()
        if args.json:
            out.write(json.dumps([_report_json(r) for r in reports], ensure_ascii=False) + "\n")
        else:
            for report in reports:
                out.write(render_report(report) + "\n")
            out.write(summary_line(reports) + "\n")
        failures = [f for r in reports for f in r.failures]
        if args.strict and failures:
            for failure in failures:
                err.write(f"replay --strict: {failure}\n")
            return 1
        return 0
    finally:
        if target_nc is not None:
            await target_nc.close()


def _arrival_s(timeline: Timeline, origin_ns: int, pacing: Pacing) -> float:
    """When a session starts in a fanout: its recorded arrival, scaled by the speed."""
    return pacing.gap((timeline.session.started_ns - origin_ns) / 1e9)


def _outcome(index: int, turn: ObservedTurn) -> IterationOutcome:
    """A replayed turn as a benchmark iteration, for clients.bench's report and plot."""
    interrupted = turn.ended_by in ("cancel", "barge_in", "end")
    barge = None
    if turn.interrupt_sent_at is not None:
        acked_by = {"cancel": "done", "barge_in": "ack"}.get(turn.ended_by or "")
        barge = BargeInOutcome(turn.interrupt_sent_at, turn.interrupt_acked_at, acked_by)  # type: ignore[arg-type]
    failed = turn.ended_by in ("error", "closed", None)
    result = TurnResult(
        sent_at=turn.sent_at,
        frames=tuple(turn.frames),
        ack=turn.ack,
        toolcall_status=turn.toolcall_status,
        toolcall_raw=None,
        text=turn.text,
        error_codes=(turn.error_code or turn.ended_by or "incomplete",) if failed else (),
        error_messages=("",) if failed else (),
        cancelled=interrupted,
        done=turn.ended_by in ("done", "cancel", "error"),
        closed=turn.ended_by == "closed",
        usage=turn.usage,
        stale=0,
        barge_in=barge,
    )
    return IterationOutcome(
        index,
        "error" if failed else "ok",
        (result,),
        (turn.error_code or turn.ended_by) if failed else None,
        None,
        barge_in_planned=interrupted,
    )


def _bench_report(
    args: argparse.Namespace, api_key: str, runs: list[SessionRun], began: float
) -> BenchReport:
    outcomes = []
    for run in runs:
        for turn in run.turns:
            outcomes.append(_outcome(len(outcomes), turn))
    config = BenchConfig(
        url=args.url,
        api_key=api_key,
        requests=max(len(outcomes), 1),
        concurrency=max(len(runs), 1),
        timeout_s=args.timeout,
        assistant_gender="woman",
        persona_style="wholesome",
        message=f"replay of {len(runs)} session(s)",
        mode="persistent",
        barge_in=any(o.barge_in_planned for o in outcomes),
    )
    return BenchReport(config, tuple(outcomes), time.monotonic() - began)


def _list_json(timelines: list[Timeline]) -> str:
    rows = [
        {
            "session_id": t.session.session_id,
            "started_ns": t.session.started_ns,
            "turns": len(t.turns),
            "deploy": t.session.deployment.deploy if t.session.deployment else None,
            "outcomes": [outcome_word(turn) for turn in t.turns],
        }
        for t in timelines
    ]
    return json.dumps(rows) + "\n"


def _report_json(report: SessionReport) -> dict[str, Any]:
    return {
        "session_id": report.timeline.session.session_id,
        "replay_session_id": report.run.session_id,
        "ok": report.ok,
        "failures": report.failures,
        "turns": [
            {
                "turn": t.index,
                "decision": {"then": t.decision[0], "now": t.decision[1]},
                "text": {
                    "then": t.text_then,
                    "now": t.text_now,
                    "divergence": t.divergence,
                    "note": t.text_note,
                },
                "frames": {"then": list(t.frames[0]), "now": list(t.frames[1])},
                "cached_tokens": {"then": t.cached[0], "now": t.cached[1]},
                "latency_ms": {
                    label: {"then": then_ms, "now": now_ms, "regressed": regressed}
                    for label, then_ms, now_ms, regressed in t.latencies
                },
            }
            for t in report.turns
        ],
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            status = runner.run(amain(args, os.environ, sys.stdout, sys.stderr))
        except ReplayError as exc:
            print(f"replay: {exc}", file=sys.stderr)
            status = 2
        except KeyboardInterrupt:
            status = 130
    sys.exit(status)
