"""``python -m bench.overhead``: parse the flags, run the sweep or the client."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.overhead.client import client_main
from bench.overhead.phases import run_benchmark
from bench.overhead.report import json_default, load_report, plot_report
from bench.overhead.spec import Settings
from bus.loop import loop_factory

__all__ = ["main", "parse_args"]

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
    parser.add_argument(
        "--edges",
        type=_ints,
        default=(1,),
        help="edge processes on one port (SO_REUSEPORT); the first count runs everything, "
        "each further one (1,2) the throughput ladder again, bus side only",
    )
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
    if not args.edges or min(args.edges) < 1:
        parser.error("--edges wants counts of at least 1, e.g. 1,2")
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
        edges=args.edges,
    )
    return settings, args


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    settings, args = parse_args(argv)
    if args.client:
        client_main(args.client)
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
        Path(args.json).write_text(json.dumps(report, default=json_default, indent=1) + "\n")
    if args.plot:
        plot_report(report, args.plot)


if __name__ == "__main__":
    main()
