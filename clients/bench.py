"""Load benchmark: N turns at concurrency C, then latency percentiles.

``python -m clients.bench -n N -c C [options] [message words...]``

Modes:
    ``new-connection`` (default, as the original ``test/bench.py``): every turn
    opens its own connection with a fresh session id.
    ``persistent`` (as Pipecat): C connections stay open, one session each, and
    run turns back to back; ``--turns-per-connection K`` reconnects every K turns.
    Each session carries its conversation: a turn's ``history_text`` is the
    session's previous exchanges in the canonical format (``bus.history``: the
    utterance, then the reply as received), which is what lets the chat actor warm
    the next turn while the client sends it (``--no-history`` sends none;
    ``--server-history`` lets the edge keep it: each start carries only its
    utterance and ``server_history``).

``--barge-in`` interrupts every ``--barge-in-every``-th turn once
``--barge-in-after`` tokens arrived, with a second ``start`` or a ``cancel``
(``--barge-in-kind``), and measures the cancel latency: from sending it to the
old turn's ``done`` with ``cancelled``, or to the new turn's ``ack``.

Prints totals (ok, errors by ``error_code``, timeouts) and p50/p95/p99 of
``toolcall_ttfb_ms``, ``chat_ttfb_ms``, ``first_sentence_ms``,
``first_3_words_ms``, ``total_ms`` and ``cancel_ms``; ``--json`` prints one JSON
object instead; ``--plot out.png`` draws the distributions (needs the ``bench``
extra). Only turns that completed normally feed the latency distributions.
Env (read in ``main`` only): ``SERVER_WS_URL``, ``YAP_API_KEY``,
``ASSISTANT_GENDER``, ``PERSONA_STYLE``. Exit status: 0 when every turn was ok.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from websockets.exceptions import InvalidHandshake, InvalidStatus

from bus.history import append_turn
from bus.loop import loop_factory
from clients.metrics import Summary, summarize
from clients.turn import (
    BargeIn,
    BargeInOutcome,
    FrameStream,
    TurnResult,
    TurnTimeout,
    collect_turn,
    open_stream,
    run_turn,
    start_message,
)

__all__ = [
    "METRICS",
    "BenchConfig",
    "BenchReport",
    "IterationOutcome",
    "ProgressBar",
    "amain",
    "check_plot",
    "main",
    "parse_args",
    "plot_report",
    "render_json",
    "render_text",
    "run_bench",
]

DEFAULT_URL = "ws://127.0.0.1:8000/ws"
DEFAULT_API_KEY = "yap_token"
DEFAULT_MESSAGE = "who was Columbus?"
GENDERS = ("female", "male", "woman", "man")
# Report name -> field of clients.metrics.TurnMetrics (the seed's names on both sides).
METRICS: tuple[tuple[str, str], ...] = (
    ("toolcall_ttfb_ms", "ttfb_toolcall_ms"),
    ("chat_ttfb_ms", "ttfb_chat_ms"),
    ("first_sentence_ms", "time_to_first_complete_sentence_ms"),
    ("first_3_words_ms", "time_to_first_3_words_ms"),
    ("total_ms", "total_ms"),
)
CANCEL_METRIC = "cancel_ms"
HINTS = {
    "authentication_failed": "check the YAP_API_KEY environment variable",
    "server_at_capacity": "server at capacity; reduce concurrency (-c) or retry later",
}

Mode = Literal["new-connection", "persistent"]
Status = Literal["ok", "error", "timeout"]
BargeKind = Literal["start", "cancel"]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    url: str
    api_key: str
    requests: int
    concurrency: int
    timeout_s: float
    assistant_gender: str
    persona_style: str
    message: str
    mode: Mode = "new-connection"
    # 0: a persistent connection runs turns until the benchmark ends.
    turns_per_connection: int = 0
    barge_in: bool = False
    barge_in_kind: BargeKind = "start"
    barge_in_every: int = 2
    barge_in_after_tokens: int = 3
    json: bool = False
    plot: str | None = None
    # Persistent mode: each session sends its conversation so far (bus.history).
    history: bool = True
    # Every start asks the edge to keep the history; the client sends none.
    server_history: bool = False

    def __post_init__(self) -> None:
        if self.requests < 1 or self.concurrency < 1:
            raise ValueError("requests and concurrency must be at least 1")
        if self.barge_in_every < 1 or self.barge_in_after_tokens < 1:
            raise ValueError("barge-in every and after must be at least 1")
        if self.turns_per_connection < 0:
            raise ValueError("turns per connection must not be negative")
        if self.server_history and not self.history:
            raise ValueError("--server-history keeps a history; it cannot go with --no-history")

    @property
    def per_connection(self) -> int:
        """Turns a connection runs before it is replaced; 0 means no limit."""
        return 1 if self.mode == "new-connection" else self.turns_per_connection

    def barges(self, index: int) -> bool:
        return self.barge_in and index % self.barge_in_every == self.barge_in_every - 1


@dataclass(frozen=True, slots=True)
class IterationOutcome:
    """One benchmark turn: its ``start``, and the barge-in's turn when there was one."""

    index: int
    status: Status
    turns: tuple[TurnResult, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    barge_in_planned: bool = False

    @property
    def barge_in(self) -> BargeInOutcome | None:
        return self.turns[0].barge_in if self.turns else None


@dataclass(frozen=True, slots=True)
class BenchReport:
    config: BenchConfig
    outcomes: tuple[IterationOutcome, ...]
    wall_s: float

    def count(self, status: Status) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    def errors(self) -> dict[str, int]:
        codes = Counter(
            outcome.error_code or "unknown_error"
            for outcome in self.outcomes
            if outcome.status == "error"
        )
        return dict(sorted(codes.items()))

    def samples(self) -> dict[str, list[float]]:
        """Raw values per metric: completed turns only, plus cancel latencies."""
        samples: dict[str, list[float]] = {name: [] for name, _ in METRICS}
        samples[CANCEL_METRIC] = []
        for outcome in self.outcomes:
            for turn in outcome.turns:
                if not turn.ok:
                    continue
                metrics = turn.metrics()
                for name, field_name in METRICS:
                    value = getattr(metrics, field_name)
                    if value is not None:
                        samples[name].append(value)
            barge = outcome.barge_in
            if barge is not None and barge.latency_ms is not None:
                samples[CANCEL_METRIC].append(barge.latency_ms)
        return samples

    def summaries(self) -> dict[str, Summary | None]:
        return {name: summarize(values) for name, values in self.samples().items()}

    def barge_in_counts(self) -> dict[str, int]:
        planned = [outcome for outcome in self.outcomes if outcome.barge_in_planned]
        sent = [outcome.barge_in for outcome in planned if outcome.barge_in is not None]
        acknowledged = [barge for barge in sent if barge.acknowledged_by is not None]
        return {
            "planned": len(planned),
            "sent": len(sent),
            "acknowledged": len(acknowledged),
            # The old turn finished before the server saw the barge-in.
            "late": len(sent) - len(acknowledged),
            # The reply ended before enough tokens arrived to barge in.
            "not_sent": len(planned) - len(sent),
        }

    def example_error(self) -> str | None:
        for outcome in self.outcomes:
            if outcome.status == "error":
                return f"{outcome.error_code}: {outcome.error_message or ''}".rstrip()
        return None

    def as_dict(self) -> dict[str, Any]:
        config = self.config
        return {
            "url": config.url,
            "mode": config.mode,
            "total": len(self.outcomes),
            "concurrency": min(config.concurrency, config.requests),
            "turns_per_connection": config.per_connection,
            "server_history": config.server_history,
            "ok": self.count("ok"),
            "errors": self.errors(),
            "error_count": self.count("error"),
            "timeouts": self.count("timeout"),
            "wall_s": round(self.wall_s, 3),
            "turns_per_s": round(len(self.outcomes) / self.wall_s, 2) if self.wall_s else None,
            "barge_in": self.barge_in_counts() if config.barge_in else None,
            "metrics": {
                name: summary.as_dict() if summary is not None else None
                for name, summary in self.summaries().items()
            },
            "example_error": self.example_error(),
        }


class ProgressBar:
    """A one-line progress bar redrawn in place; silent when ``enabled`` is false."""

    WIDTH = 30

    def __init__(self, total: int, out: TextIO, *, enabled: bool) -> None:
        self._total = total
        self._out = out
        self._enabled = enabled
        self._done = 0
        self._failed = 0

    def advance(self, outcome: IterationOutcome) -> None:
        self._done += 1
        self._failed += outcome.status != "ok"
        if not self._enabled:
            return
        filled = self.WIDTH * self._done // self._total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._out.write(f"\r[{bar}] {self._done}/{self._total} failed={self._failed}")
        self._out.flush()

    def close(self) -> None:
        if self._enabled and self._done:
            self._out.write("\n")
            self._out.flush()


def _status_of(config: BenchConfig, turns: Sequence[TurnResult]) -> tuple[Status, str | None, str]:
    for turn in turns:
        if turn.error_codes:
            return "error", turn.error_codes[0], turn.error_messages[0]
    first, last = turns[0], turns[-1]
    if first.barge_in is not None and config.barge_in_kind == "cancel":
        # The interrupted turn is the whole iteration: cancelled, or done anyway if late.
        return ("ok", None, "") if first.done else ("error", "incomplete", "no done")
    if last.ok:
        return "ok", None, ""
    return "error", "incomplete", "turn ended without done"


async def _iteration(
    stream: FrameStream, config: BenchConfig, session_id: str, index: int, history: str = ""
) -> IterationOutcome:
    planned = config.barges(index)
    barge_in = None
    if planned:
        message: dict[str, Any] = {"type": "cancel"}
        if config.barge_in_kind == "start":
            message = _start(config, session_id, history)
        barge_in = BargeIn(config.barge_in_after_tokens, message)
    deadline = time.monotonic() + config.timeout_s
    turns: list[TurnResult] = []
    try:
        first = await run_turn(
            stream,
            _start(config, session_id, history),
            recv_timeout_s=None,
            deadline=deadline,
            barge_in=barge_in,
        )
        turns.append(first)
        # A refused barge-in start (an error frame) or a closed connection has no turn.
        if (
            first.barge_in is not None
            and config.barge_in_kind == "start"
            and not first.closed
            and not first.error_codes
        ):
            turns.append(
                await collect_turn(
                    stream,
                    first.barge_in.sent_at,
                    recv_timeout_s=None,
                    deadline=deadline,
                    skip_cancelled_done=first.barge_in.acknowledged_by == "ack",
                )
            )
    except TurnTimeout as exc:
        turns.append(exc.partial)
        return IterationOutcome(
            index, "timeout", tuple(turns), "timeout", str(exc), barge_in_planned=planned
        )
    status, code, detail = _status_of(config, turns)
    return IterationOutcome(index, status, tuple(turns), code, detail, barge_in_planned=planned)


def _start(config: BenchConfig, session_id: str, history: str = "") -> dict[str, Any]:
    return start_message(
        session_id,
        config.message,
        assistant_gender=config.assistant_gender,
        persona_style=config.persona_style,
        history_text=history,
        server_history=config.server_history,
    )


def _next_history(config: BenchConfig, history: str, outcome: IterationOutcome) -> str:
    """The session's history after ``outcome``: its completed turn's exchange appended.

    A turn cut off by a barge-in adds nothing; the barge-in's own turn, when it
    completed, is the exchange.
    """
    if (
        not config.history
        or config.server_history  # the edge appends it
        or config.mode != "persistent"
        or outcome.status != "ok"
    ):
        return history
    last = outcome.turns[-1] if outcome.turns else None
    if last is None or not last.ok:
        return history
    return append_turn(history, config.message, last.text)


def _connect_failure(index: int, exc: Exception, planned: bool) -> IterationOutcome:
    if isinstance(exc, InvalidStatus):
        code = f"http_{exc.response.status_code}"
    elif isinstance(exc, InvalidHandshake):
        code = "handshake_failed"
    elif isinstance(exc, TimeoutError):
        code = "connect_timeout"
    else:
        code = "connect_failed"
    return IterationOutcome(index, "error", (), code, str(exc), barge_in_planned=planned)


async def _worker(
    config: BenchConfig, indices: Iterator[int], record: Callable[[IterationOutcome], None]
) -> None:
    """Run turns from the shared ``indices`` until none are left, reconnecting as needed."""
    index = next(indices, None)
    while index is not None:
        session_id = str(uuid.uuid4())
        connection = contextlib.AsyncExitStack()
        try:
            stream = await connection.enter_async_context(
                open_stream(config.url, config.api_key, open_timeout_s=config.timeout_s)
            )
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            record(_connect_failure(index, exc, config.barges(index)))
            index = next(indices, None)
            continue
        async with connection:
            used = 0
            history = ""
            while index is not None:
                outcome = await _iteration(stream, config, session_id, index, history)
                history = _next_history(config, history, outcome)
                record(outcome)
                used += 1
                index = next(indices, None)
                # After an error or a timeout the connection's state is unknown: replace it.
                if outcome.status != "ok" or stream.closed:
                    break
                if config.per_connection and used >= config.per_connection:
                    break


async def run_bench(config: BenchConfig, progress: ProgressBar | None = None) -> BenchReport:
    """Run the benchmark described by ``config`` and collect every turn."""
    outcomes: list[IterationOutcome] = []

    def record(outcome: IterationOutcome) -> None:
        outcomes.append(outcome)
        if progress is not None:
            progress.advance(outcome)

    indices = iter(range(config.requests))
    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(config.concurrency, config.requests)):
            group.create_task(_worker(config, indices, record))
    wall_s = time.monotonic() - started
    if progress is not None:
        progress.close()
    return BenchReport(config, tuple(sorted(outcomes, key=lambda o: o.index)), wall_s)


def _fmt(summary: Summary) -> str:
    return f"p50={summary.p50:.1f} p95={summary.p95:.1f} p99={summary.p99:.1f} n={summary.count}"


def render_text(report: BenchReport) -> str:
    """The human summary, one fact per line, in the seed's ``name p50=… p95=…`` form."""
    data = report.as_dict()
    lines = [
        f"url={data['url']} mode={data['mode']} total={data['total']} "
        f"conc={data['concurrency']} ok={data['ok']} err={data['error_count']} "
        f"timeouts={data['timeouts']} wall_s={data['wall_s']} turns_per_s={data['turns_per_s']}"
    ]
    if data["errors"]:
        lines.append("errors " + " ".join(f"{code}={n}" for code, n in data["errors"].items()))
    for name, summary in report.summaries().items():
        if summary is not None:
            lines.append(f"{name} {_fmt(summary)}")
    if data["barge_in"] is not None:
        lines.append("barge_in " + " ".join(f"{k}={v}" for k, v in data["barge_in"].items()))
    example = data["example_error"]
    if example:
        lines.append(f"example_error={example}")
        for code, hint in HINTS.items():
            if code in example:
                lines.append(f"hint: {hint}")
    return "\n".join(lines)


def render_json(report: BenchReport) -> str:
    return json.dumps(report.as_dict(), ensure_ascii=False)


def check_plot(parser: argparse.ArgumentParser, path: str | None) -> None:
    """Refuse ``--plot`` at parse time, before any turn runs, without matplotlib."""
    if path and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install 'yap-bus[bench]'")


def plot_report(report: BenchReport, path: str) -> None:
    """Draw one histogram per metric with its p50/p95/p99 marked, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    samples = {name: values for name, values in report.samples().items() if values}
    rows = max(len(samples), 1)
    figure, axes = plt.subplots(
        rows, 1, figsize=(8, 2.4 * rows), squeeze=False, layout="constrained"
    )
    for axis, (name, values) in zip(axes[:, 0], samples.items(), strict=False):
        axis.hist(values, bins=min(50, max(10, len(values) // 4)), color="#4c72b0")
        summary = summarize(values)
        if summary is not None:
            for value, style in ((summary.p50, "-"), (summary.p95, "--"), (summary.p99, ":")):
                axis.axvline(value, color="#c44e52", linestyle=style)
        axis.set_title(f"{name} (n={len(values)}; p50 solid, p95 dashed, p99 dotted)")
        axis.set_xlabel("ms")
    config = report.config
    figure.suptitle(f"{config.mode} n={config.requests} c={config.concurrency}")
    figure.savefig(path)
    plt.close(figure)


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> BenchConfig:
    """Build the config from command-line arguments, with ``env`` for defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m clients.bench", description="Benchmark a Yap WebSocket server."
    )
    parser.add_argument("message", nargs="*", help=f"user utterance (default: {DEFAULT_MESSAGE})")
    parser.add_argument("--requests", "-n", type=int, default=16, help="total turns")
    parser.add_argument("--concurrency", "-c", type=int, default=8, help="turns in flight")
    parser.add_argument("--url", default=env.get("SERVER_WS_URL", DEFAULT_URL))
    parser.add_argument("--timeout", type=float, default=120.0, help="per-turn limit (s)")
    parser.add_argument(
        "--assistant-gender",
        "--gender",
        "-g",
        dest="assistant_gender",
        choices=GENDERS,
        default=env.get("ASSISTANT_GENDER", "female"),
    )
    parser.add_argument(
        "--persona-style",
        "--style",
        "-s",
        dest="persona_style",
        default=env.get("PERSONA_STYLE", "wholesome"),
    )
    parser.add_argument(
        "--mode", choices=("new-connection", "persistent"), default="new-connection"
    )
    parser.add_argument(
        "--turns-per-connection",
        type=int,
        default=None,
        metavar="K",
        help="persistent mode: reconnect every K turns (default: never)",
    )
    parser.add_argument(
        "--no-history",
        dest="history",
        action="store_false",
        help="persistent mode: send no conversation history (default: each session's own)",
    )
    parser.add_argument(
        "--server-history",
        action="store_true",
        help="let the server keep each session's history: send only the utterances",
    )
    parser.add_argument("--barge-in", action="store_true", help="interrupt some turns")
    parser.add_argument("--barge-in-kind", choices=("start", "cancel"), default="start")
    parser.add_argument(
        "--barge-in-every", type=int, default=2, metavar="K", help="interrupt every K-th turn"
    )
    parser.add_argument(
        "--barge-in-after",
        type=int,
        default=3,
        metavar="T",
        help="interrupt once T tokens arrived",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="PATH", help="save latency histograms (matplotlib)")
    args = parser.parse_args(list(argv))
    if args.turns_per_connection is not None and args.mode != "persistent":
        parser.error("--turns-per-connection needs --mode persistent")
    check_plot(parser, args.plot)
    try:
        return BenchConfig(
            url=args.url,
            api_key=env.get("YAP_API_KEY", DEFAULT_API_KEY),
            requests=args.requests,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
            assistant_gender=args.assistant_gender,
            persona_style=args.persona_style,
            message=" ".join(args.message).strip() or DEFAULT_MESSAGE,
            mode=args.mode,
            turns_per_connection=args.turns_per_connection or 0,
            barge_in=args.barge_in,
            barge_in_kind=args.barge_in_kind,
            barge_in_every=args.barge_in_every,
            barge_in_after_tokens=args.barge_in_after,
            json=args.json,
            plot=args.plot,
            history=args.history,
            server_history=args.server_history,
        )
    except ValueError as exc:
        parser.error(str(exc))


async def amain(argv: Sequence[str], env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Parse, run, print; the progress bar goes to ``err`` when it is a terminal."""
    config = parse_args(argv, env)
    progress = ProgressBar(config.requests, err, enabled=err.isatty())
    report = await run_bench(config, progress)
    out.write((render_json(report) if config.json else render_text(report)) + "\n")
    out.flush()
    if config.plot:
        plot_report(report, config.plot)
    return 0 if report.count("ok") == len(report.outcomes) else 1


def main() -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            status = runner.run(amain(sys.argv[1:], os.environ, sys.stdout, sys.stderr))
        except KeyboardInterrupt:
            status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
