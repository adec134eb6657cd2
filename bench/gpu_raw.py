"""Raw engines benchmark: the tool and chat engines side by side, no bus, no edge.

Both engines start as the actors start them (``VllmEngine``: tool at 0.20 of the
GPU's memory, then chat at 0.70; fp8 weights and KV cache by default), and requests
go to each engine's ``generate`` as the actors send them: token ids built by the
actors' own prompt code (``ToolPrompts`` / ``ChatPrompts``) *before* the clock
starts, ids-only decoding, ``ignore_eos`` so every answer has its token budget.
What the full stack adds (``bench.gpu_fullstack``) is then everything around the
engine: JSON, the edge, NATS, the actors' loops and prompt building.

* persona ~900 tokens, the same for every session (warmed once, as sessions do);
* history ~1500 tokens, different per session and per scenario (cold on turn 1);
* utterance ~30 tokens; chat answers 200 tokens; the tool answers 10 tokens, or 2
  (the actor's early stop once the yes/no decision is known);
* each scenario runs N sessions for ``--turns`` turns: all N start a turn at the
  same instant (a burst), and the next turn starts ``--think-s`` after the last
  session's reply ended (the user speaking). A turn's history is the previous one
  plus that exchange in the canonical format (``bus.history``), the reply being the
  text the engine streamed: turn 2 on reuses persona and history from the cache.
* ``sequential`` starts chat after the tool's answer (the default deployment);
  ``concurrent`` sends both at once (``concurrent_model_call``).

Figures per scenario and turn, p50/p95 over the sessions: tool decision (submit to
last tool token) and first tool token, chat TTFT (chat submit to first text), turn
TTFT (turn start to first chat text: what a caller waits), TPOT, ITL p95, prompt and
cached tokens; and each leg by stage from the engine's stamps (``LegTiming.stages``:
intake, wait, prefill, return), with how far apart the burst reached each stamp.

``--backend transformers`` runs the same on the tiny CPU models: a dry run of every
path (``scripts/gpu/fullstack.sh`` with ``DRY_RUN=1``), not a benchmark.

Usage (on the GPU machine; models default to random-weight checkpoints)::

    python -m bench.gpu_raw --sessions 1,16 --out results.json
    python -m bench.gpu_raw --sessions 16 --chat-model random:mistral-nemo-12b
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from actors.emitter import LegClock
from actors.engines.base import Engine, EngineStamps, SamplingSpec, sampling_spec
from actors.prompts.chat import ChatPrompts
from actors.prompts.hammer import ToolPrompts
from actors.prompts.units import UnitEncoder
from bus.events import LegTiming
from bus.history import Role, append_message, append_turn
from bus.stats import percentile
from configs.schema import ChatConfig, EngineBackend, SamplingConfig, ToolConfig

__all__ = [
    "CHAT_SAMPLING",
    "Workload",
    "history_of",
    "main",
    "raw_leg",
    "spreads_ms",
    "stages_p50_ms",
    "summary_ms",
    "text_of_tokens",
    "words",
]

_WORD_TEXT = (
    "the a and to of in that it is was for on with as I you he she we they at be this "
    "have from or one had by word but not what all were when your can said there use an "
    "each which do how their if will up other about out many then them these so some her "
    "would make like him into time has look two more write go see number no way could "
    "people my than first water been call who oil its now find long down day did get come "
    "made may part coffee weekend movie garden friend sister work trip dinner music rain "
    "dog park train city book song phone game plan story morning night week sunday"
)
WORDS = tuple(_WORD_TEXT.split())
CHAT_SAMPLING = SamplingConfig(
    temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1, ignore_eos=True
)
PERSONA_LEAD = "You are June, a warm companion. "
UTTERANCE_LEAD = "Hey, "


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
    persona_tokens: int = 900
    history_tokens: int = 1500
    utterance_tokens: int = 30
    chat_out: int = 200
    turns: int = 3
    think_s: float = 0.5


@dataclasses.dataclass(kw_only=True)
class Timing:
    """One request's clock readings (``time.monotonic`` seconds, the engine's clock)."""

    submit: float
    first_output: float = 0.0  # the engine's first output, text or not
    stamps: EngineStamps | None = None  # the engine's, from that output
    first: float = 0.0
    last: float = 0.0
    tokens: int = 0
    gaps: list[float] = dataclasses.field(default_factory=list)  # per token, seconds
    cached: int = 0
    prompt_tokens: int = 0
    text: str = ""


def words(rng: random.Random, count: int) -> str:
    out = []
    for i in range(count):
        word = rng.choice(WORDS)
        out.append(word.capitalize() if i % 12 == 0 else word)
        if i % 12 == 11:
            out[-1] += "."
    return " ".join(out)


def text_of_tokens(tokenizer: Any, rng: random.Random, tokens: int, prefix: str = "") -> str:
    """English-like text of exactly ``tokens`` tokens (give or take one at the cut)."""
    text = prefix + words(rng, tokens)
    while len(tokenizer.encode(text, add_special_tokens=False)) < tokens:
        text += " " + words(rng, tokens // 4 + 8)
    ids = tokenizer.encode(text, add_special_tokens=False)[:tokens]
    return tokenizer.decode(ids)


def history_of(tokenizer: Any, rng: random.Random, tokens: int) -> str:
    """A canonical history (``bus.history``) of about ``tokens`` tokens."""
    history, total = "", 0
    role: Role = "user"
    while total < tokens:
        before = len(history)
        history = append_message(history, role, words(rng, rng.randint(12, 40)))
        total += len(tokenizer.encode(history[before:], add_special_tokens=False))
        role = "assistant" if role == "user" else "user"
    return history


def raw_leg(timing: Timing) -> LegTiming:
    """A raw request's stamps as a leg's: its prompt was built before the clock."""
    clock = LegClock(
        received=timing.submit,
        submitted=timing.submit,
        first_output=timing.first_output,
        engine=timing.stamps,
    )
    return clock.timing(timing.first)


def stages_p50_ms(legs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per stage (``LegTiming.stages`` and any extra keys), its p50 over the legs, ms."""
    by_stage: dict[str, list[float]] = {}
    for stages in legs:
        for name, seconds in stages.items():
            by_stage.setdefault(name, []).append(seconds)
    return {name: round(percentile(v, 50) * 1e3, 2) for name, v in by_stage.items()}


SPREAD_STAMPS = ("received", "submitted", "queued", "scheduled", "first_token")


def spreads_ms(legs: Sequence[LegTiming]) -> dict[str, float]:
    """How far apart a burst's legs reached each stamp (last minus first, ms): a burst
    that reaches the engine spread out is scheduled over more steps."""
    spreads = {}
    for name in SPREAD_STAMPS:
        stamps = [getattr(leg, name) for leg in legs if getattr(leg, name)]
        if stamps:
            spreads[name] = round((max(stamps) - min(stamps)) * 1e3, 2)
    return spreads


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "mean": float("nan"), "n": 0}
    return {
        "p50": round(percentile(values, 50) * 1e3, 2),
        "p95": round(percentile(values, 95) * 1e3, 2),
        "mean": round(sum(values) / len(values) * 1e3, 2),
        "n": len(values),
    }


class Bench:
    def __init__(self, tool: Engine, chat: Engine, workload: Workload) -> None:
        self.tool = tool
        self.chat = chat
        self.workload = workload
        self.chat_prompts = ChatPrompts(UnitEncoder(chat.tokenizer), history_max_tokens=3000)
        self.tool_prompts = ToolPrompts(UnitEncoder(tool.tokenizer), history_max_tokens=300)
        rng = random.Random(0)
        self.persona = text_of_tokens(chat.tokenizer, rng, workload.persona_tokens, PERSONA_LEAD)

    async def request(
        self, engine: Engine, prompt_ids: list[int], spec: SamplingSpec, request_id: str
    ) -> Timing:
        timing = Timing(submit=time.monotonic(), prompt_tokens=len(prompt_ids))
        previous = 0.0
        pieces: list[str] = []
        async for out in engine.generate(prompt_ids, spec, request_id):
            now = time.monotonic()
            if not timing.first_output:
                timing.first_output, timing.stamps = now, out.stamps
            new = out.completion_tokens - timing.tokens
            if new <= 0 or not out.text:
                timing.tokens = max(timing.tokens, out.completion_tokens)
                continue
            if not pieces:
                timing.first = now
                timing.cached = out.cached_tokens
            else:
                timing.gaps.extend([(now - previous) / new] * new)
            pieces.append(out.text)
            previous = timing.last = now
            timing.tokens = out.completion_tokens
        timing.text = "".join(pieces)
        return timing

    async def turn(
        self, *, rid: str, mode: str, tool_tokens: int, history: str, utterance: str
    ) -> dict[str, Any]:
        # Built before the clock: raw is the engines alone.
        tool_ids = await self.tool_prompts.turn(user_utterance=utterance, history_text=history)
        chat_ids = await self.chat_prompts.turn(
            persona_text=self.persona, history_text=history, user_utterance=utterance
        )
        tool_spec = SamplingSpec(max_tokens=tool_tokens, ignore_eos=True)
        chat_spec = sampling_spec(CHAT_SAMPLING, self.workload.chat_out)
        start = time.monotonic()
        if mode == "sequential":
            tool = await self.request(self.tool, tool_ids, tool_spec, f"{rid}-tool")
            chat = await self.request(self.chat, chat_ids, chat_spec, f"{rid}-chat")
        else:
            tool, chat = await asyncio.gather(
                self.request(self.tool, tool_ids, tool_spec, f"{rid}-tool"),
                self.request(self.chat, chat_ids, chat_spec, f"{rid}-chat"),
            )
        return {"start": start, "tool": tool, "chat": chat}

    async def scenario(
        self, *, mode: str, sessions: int, tool_tokens: int, turns: int | None = None
    ) -> list[dict]:
        name = f"{mode}-{sessions}-{tool_tokens}-{time.monotonic_ns()}"
        workload = self.workload
        turns = workload.turns if turns is None else turns
        tokenizer = self.chat.tokenizer
        rngs = [random.Random(f"{name}/{i}") for i in range(sessions)]
        histories = [history_of(tokenizer, rng, workload.history_tokens) for rng in rngs]
        began = time.perf_counter()
        rows = []
        for turn in range(1, turns + 1):
            if turn > 1:
                await asyncio.sleep(workload.think_s)  # the users speak
            utterances = [
                text_of_tokens(tokenizer, rng, workload.utterance_tokens, UTTERANCE_LEAD)
                for rng in rngs
            ]
            records = await asyncio.gather(
                *(
                    self.turn(
                        rid=f"{name}-{i}-{turn}",
                        mode=mode,
                        tool_tokens=tool_tokens,
                        history=histories[i],
                        utterance=utterances[i],
                    )
                    for i in range(sessions)
                )
            )
            rows.append(self._row(mode, sessions, tool_tokens, turn, records))
            for i, record in enumerate(records):
                histories[i] = append_turn(histories[i], utterances[i], record["chat"].text)
        for row in rows:
            row["wall_s"] = round(time.perf_counter() - began, 2)
        return rows

    @staticmethod
    def _row(mode: str, sessions: int, tool_tokens: int, turn: int, records: list) -> dict:
        tools = [r["tool"] for r in records]
        chats = [r["chat"] for r in records]
        tool_legs = [raw_leg(t) for t in tools]
        chat_legs = [raw_leg(c) for c in chats]
        return {
            "mode": mode,
            "sessions": sessions,
            "tool_tokens": tool_tokens,
            "turn": turn,
            "tool_ms": summary_ms([t.last - t.submit for t in tools]),
            # The full stack decides at the first token that settles it, often the first.
            "tool_first_ms": summary_ms([t.first - t.submit for t in tools]),
            "tool_stages_ms": stages_p50_ms([leg.stages() for leg in tool_legs]),
            "tool_spread_ms": spreads_ms(tool_legs),
            "chat_stages_ms": stages_p50_ms([leg.stages() for leg in chat_legs]),
            "chat_spread_ms": spreads_ms(chat_legs),
            "chat_ttft_ms": summary_ms([c.first - c.submit for c in chats]),
            "turn_ttft_ms": summary_ms([r["chat"].first - r["start"] for r in records]),
            "tpot_ms": summary_ms(
                [(c.last - c.first) / (c.tokens - 1) for c in chats if c.tokens > 1]
            ),
            "itl_p95_ms": summary_ms([g for c in chats for g in c.gaps])["p95"],
            "chat_prompt_tokens": round(sum(c.prompt_tokens for c in chats) / len(chats)),
            "chat_cached_tokens": round(sum(c.cached for c in chats) / len(chats)),
            "tool_prompt_tokens": round(sum(t.prompt_tokens for t in tools) / len(tools)),
            "tool_cached_tokens": round(sum(t.cached for t in tools) / len(tools)),
            "chat_tokens_out": round(sum(c.tokens for c in chats) / len(chats)),
            "tool_tokens_out": round(sum(t.tokens for t in tools) / len(tools)),
        }

    async def warm_up(self, sessions: int) -> None:
        """Prime the persona prefix, then run one throwaway turn at the largest session
        count, so no batch shape meets a first-time compile when timed (one turn takes
        the decode batch up to that size and back down; more would only cost time)."""
        await self.chat.warm(await self.chat_prompts.persona_prefix(persona_text=self.persona))
        await self.scenario(mode="concurrent", sessions=sessions, tool_tokens=2, turns=1)


def device_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out


def table(rows: Sequence[dict]) -> str:
    head = (
        f"{'mode':<10} {'sess':>4} {'tool':>4} {'turn':>4} | {'tool ms p50/p95':>15} | "
        f"{'chat TTFT p50/p95':>17} | {'turn TTFT p50/p95':>17} | {'TPOT p50/p95':>13} | "
        f"{'ITL p95':>7} | {'chat in/cached':>14} | {'tool in/cached':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:

        def pair(key: str, r: dict = r) -> str:
            return f"{r[key]['p50']:.1f}/{r[key]['p95']:.1f}"

        lines.append(
            f"{r['mode']:<10} {r['sessions']:>4} {r['tool_tokens']:>4} {r['turn']:>4} | "
            f"{pair('tool_ms'):>15} | {pair('chat_ttft_ms'):>17} | {pair('turn_ttft_ms'):>17} | "
            f"{pair('tpot_ms'):>13} | {r['itl_p95_ms']:>7.1f} | "
            f"{r['chat_prompt_tokens']:>6}/{r['chat_cached_tokens']:<7} | "
            f"{r['tool_prompt_tokens']:>6}/{r['tool_cached_tokens']:<7}"
        )
    return "\n".join(lines)


def build_engines(args: argparse.Namespace, chat_model: str) -> tuple[Engine, Engine]:
    backend: EngineBackend = args.backend
    engine: dict[str, Any] = {
        "backend": backend,
        "model_cache_dir": args.cache_dir,
        "kv_dtype": args.kv_dtype,
        "quantization": args.quantization,
        "max_len": args.max_len,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "enforce_eager": args.enforce_eager,
    }
    tool_config = ToolConfig(model=args.tool_model, **engine)
    chat_config = ChatConfig(model=chat_model, sampling=CHAT_SAMPLING, **engine)
    if backend == "vllm":
        from actors.engines.vllm_engine import VllmEngine

        return (
            VllmEngine(tool_config, gpu_frac=args.tool_frac),
            VllmEngine(chat_config, gpu_frac=args.chat_frac),
        )
    from actors.engines.transformers_engine import TransformersEngine

    return TransformersEngine(tool_config), TransformersEngine(chat_config)


async def timed_start(engine: Engine) -> float:
    began = time.perf_counter()
    await engine.start()
    return round(time.perf_counter() - began, 1)


class Results:
    """The run's results, rewritten after every scenario: a run cut short keeps them."""

    def __init__(self, path: str | None, header: dict[str, Any]) -> None:
        self._path = path
        self.data: dict[str, Any] = {**header, "engine_start": {}, "rows": []}

    def add(self, rows: list[dict], **labels: Any) -> None:
        for row in rows:
            self.data["rows"].append({**labels, **row})
        self.save()

    def save(self) -> None:
        if self._path:
            Path(self._path).write_text(json.dumps(self.data, indent=2))


async def run_model(
    args: argparse.Namespace,
    results: Results,
    tool: Engine,
    chat_model: str,
    sessions: list[int],
    workload: Workload,
) -> None:
    _, chat = build_engines(args, chat_model)
    results.data["engine_start"][f"chat {chat_model}"] = await timed_start(chat)
    print(f"engines ready: {results.data['engine_start']}", flush=True)
    try:
        bench = Bench(tool, chat, workload)
        await bench.warm_up(max(sessions))
        for count in sessions:
            for mode in args.modes:
                for tool_tokens in args.tool_tokens:
                    rows = await bench.scenario(mode=mode, sessions=count, tool_tokens=tool_tokens)
                    results.add(rows, chat_model=chat_model)
                    print("\n".join(table(rows).splitlines()[2:]), flush=True)
    finally:
        await chat.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workload = Workload(
        persona_tokens=args.persona_tokens,
        history_tokens=args.history_tokens,
        chat_out=args.chat_out,
        turns=args.turns,
        think_s=args.think_s,
    )
    results = Results(
        args.out,
        {
            "device": device_name(),
            "host": platform.node(),
            "backend": args.backend,
            "command": " ".join([sys.executable, "-m", "bench.gpu_raw", *sys.argv[1:]]),
            "env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")},
            "models": {"tool": args.tool_model, "chat": [args.chat_model, *args.extra_chat_model]},
            "workload": dataclasses.asdict(workload),
            "chat_sampling": _builtins(CHAT_SAMPLING),
        },
    )
    tool, _ = build_engines(args, args.chat_model)
    results.data["engine_start"]["tool"] = await timed_start(tool)
    if args.backend == "vllm":
        from actors.engines.vllm_engine import engine_args

        results.data["engine_args"] = {
            "tool": engine_args(tool._config, gpu_frac=args.tool_frac),  # type: ignore[attr-defined]
        }
    try:
        await run_model(args, results, tool, args.chat_model, args.sessions, workload)
        for model in args.extra_chat_model:
            await run_model(args, results, tool, model, args.extra_sessions, workload)
    finally:
        await tool.close()
    if args.backend == "vllm":
        import vllm

        results.data["vllm"] = vllm.__version__
    results.save()
    return results.data


def _builtins(value: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(value)


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_raw", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backend", default="vllm", choices=("vllm", "transformers"))
    parser.add_argument("--tool-model", default="random:qwen2.5-1.5b")
    parser.add_argument("--chat-model", default="random:llama-3.1-8b")
    parser.add_argument(
        "--extra-chat-model",
        action="append",
        default=[],
        help="after the main runs, restart the chat engine with this model (repeatable)",
    )
    parser.add_argument("--extra-sessions", type=int_list, default=[16])
    parser.add_argument(
        "--cache-dir", default=os.environ.get("YAP_MODEL_CACHE", "~/.cache/yap-bus")
    )
    parser.add_argument("--sessions", type=int_list, default=[1, 16])
    parser.add_argument(
        "--modes", type=lambda s: s.split(","), default=["sequential", "concurrent"]
    )
    parser.add_argument("--tool-tokens", type=int_list, default=[10, 2])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--think-s", type=float, default=0.5)
    parser.add_argument("--persona-tokens", type=int, default=900)
    parser.add_argument("--history-tokens", type=int, default=1500)
    parser.add_argument("--chat-out", type=int, default=200)
    parser.add_argument("--tool-frac", type=float, default=0.20)
    parser.add_argument("--chat-frac", type=float, default=0.70)
    parser.add_argument("--kv-dtype", default="fp8", choices=("auto", "fp8", "int8"))
    parser.add_argument("--quantization", default=None, help="default: auto (fp8)")
    parser.add_argument("--max-len", type=int, default=5760)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.backend == "transformers" and args.kv_dtype == "fp8":
        args.kv_dtype = "auto"  # a CPU dry run: the GPU knobs do not apply
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print()
    print(f"device: {result['device']}  engine start {result['engine_start']}")
    print(table(result["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
