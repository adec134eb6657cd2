"""Raw vLLM benchmark: the tool and chat engines side by side on one GPU, no bus.

Both engines start as the actors start them (``VllmEngine``: tool at 0.20 of the
GPU's memory, then chat at 0.70; fp8 weights and KV cache by default), then requests
go straight to each ``AsyncLLM`` with ``ignore_eos`` so that every answer has exactly
its token budget, whatever random weights sample. Prompts are built by the actors'
own prompt code (Hammer prompt for the tool, ChatML persona + history + utterance
for chat) with the model's tokenizer:

* persona ~900 tokens, the same for every session (warmed once, as sessions do);
* history ~1500 tokens, different per session and per scenario (cold on turn 1);
* utterance ~30 tokens; chat answers 200 tokens; the tool answers 10 tokens, or 2
  (the actor's early stop once the yes/no decision is known).

Each scenario runs N sessions at once, each two turns in a row: turn 2's history is
turn 1's plus that exchange, so it reuses persona + history from the prefix cache.
``sequential`` starts chat after the tool's answer (the default deployment);
``concurrent`` sends both at once (``concurrent_model_call``).

Figures per scenario and turn, p50/p95 over the session turns: tool decision
latency (submit to last tool token), chat TTFT (chat submit to first token), turn
TTFT (turn start to first chat token: what a caller waits), TPOT (per request,
(last - first token) / (tokens - 1)) and the p95 of all inter-token gaps.

Usage (on the GPU machine; models default to random-weight checkpoints)::

    python -m bench.gpu_raw --sessions 1,16 --out results.json
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
from collections.abc import Sequence
from typing import Any

from actors.engines.base import SamplingSpec, sampling_spec
from actors.engines.vllm_engine import VllmEngine, engine_args, sampling_kwargs
from actors.prompts.chat import build_chat_prompt, persona_warm_prompt
from actors.prompts.hammer import build_tool_prompt
from bus.stats import percentile
from configs.schema import ChatConfig, SamplingConfig, ToolConfig

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
    persona_tokens: int = 900
    history_tokens: int = 1500
    utterance_tokens: int = 30
    reply_tokens: int = 200
    chat_out: int = 200


@dataclasses.dataclass(kw_only=True)
class Timing:
    """One request's clock readings (``time.perf_counter`` seconds)."""

    submit: float
    first: float = 0.0
    last: float = 0.0
    tokens: int = 0
    gaps: list[float] = dataclasses.field(default_factory=list)  # per token, seconds
    cached: int = 0
    prompt_tokens: int = 0


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
    lines, total = [], 0
    while total < tokens:
        speaker = "User" if len(lines) % 2 == 0 else "Assistant"
        line = f"{speaker}: {words(rng, rng.randint(12, 40))}"
        lines.append(line)
        total += len(tokenizer.encode(line + "\n", add_special_tokens=False))
    return "\n".join(lines)


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
    def __init__(self, tool: VllmEngine, chat: VllmEngine, workload: Workload) -> None:
        from vllm import SamplingParams
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind

        self.tool = tool
        self.chat = chat
        self.workload = workload
        self._params = SamplingParams
        self._delta = RequestOutputKind.DELTA
        self._tokens_input = tokens_input
        rng = random.Random(0)
        self.persona = text_of_tokens(
            chat.tokenizer, rng, workload.persona_tokens, "You are June, a warm companion. "
        )

    def params(self, spec: SamplingSpec) -> Any:
        return self._params(**sampling_kwargs(spec), output_kind=self._delta)

    async def request(
        self, engine: VllmEngine, prompt: str, spec: SamplingSpec, request_id: str
    ) -> Timing:
        submit = time.perf_counter()
        ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
        timing = Timing(submit=submit, prompt_tokens=len(ids))
        stream = engine.async_llm.generate(
            self._tokens_input(ids, prompt=prompt), self.params(spec), request_id
        )
        previous = 0.0
        async for out in stream:
            now = time.perf_counter()
            new = len(out.outputs[0].token_ids)
            if new == 0:
                continue
            if timing.tokens == 0:
                timing.first = now
                timing.cached = out.num_cached_tokens or 0
            else:
                timing.gaps.extend([(now - previous) / new] * new)
            previous = timing.last = now
            timing.tokens += new
        return timing

    async def turn(
        self, *, rid: str, mode: str, tool_tokens: int, history: str, utterance: str
    ) -> dict[str, Timing | float]:
        tool_prompt = build_tool_prompt(
            self.tool.tokenizer,
            user_utterance=utterance,
            history_text=history,
            history_max_tokens=300,
        )
        chat_prompt = build_chat_prompt(
            self.chat.tokenizer,
            persona_text=self.persona,
            history_text=history,
            user_utterance=utterance,
            history_max_tokens=3000,
        ).text
        tool_spec = SamplingSpec(max_tokens=tool_tokens, ignore_eos=True)
        chat_spec = sampling_spec(CHAT_SAMPLING, self.workload.chat_out)
        start = time.perf_counter()
        if mode == "sequential":
            tool = await self.request(self.tool, tool_prompt, tool_spec, f"{rid}-tool")
            chat = await self.request(self.chat, chat_prompt, chat_spec, f"{rid}-chat")
        else:
            tool, chat = await asyncio.gather(
                self.request(self.tool, tool_prompt, tool_spec, f"{rid}-tool"),
                self.request(self.chat, chat_prompt, chat_spec, f"{rid}-chat"),
            )
        return {"start": start, "tool": tool, "chat": chat}

    async def session(
        self, *, scenario: str, index: int, mode: str, tool_tokens: int
    ) -> list[dict[str, Timing | float]]:
        rng = random.Random(f"{scenario}/{index}")
        tokenizer = self.chat.tokenizer
        history = history_of(tokenizer, rng, self.workload.history_tokens)
        turns = []
        for turn in (1, 2):
            utterance = text_of_tokens(tokenizer, rng, self.workload.utterance_tokens)
            turns.append(
                await self.turn(
                    rid=f"{scenario}-{index}-{turn}",
                    mode=mode,
                    tool_tokens=tool_tokens,
                    history=history,
                    utterance=utterance,
                )
            )
            reply = text_of_tokens(tokenizer, rng, self.workload.reply_tokens)
            history = f"{history}\nUser: {utterance}\nAssistant: {reply}"
        return turns

    async def scenario(self, *, mode: str, sessions: int, tool_tokens: int) -> list[dict]:
        name = f"{mode}-{sessions}-{tool_tokens}-{time.monotonic_ns()}"
        began = time.perf_counter()
        results = await asyncio.gather(
            *(
                self.session(scenario=name, index=i, mode=mode, tool_tokens=tool_tokens)
                for i in range(sessions)
            )
        )
        wall = time.perf_counter() - began
        rows = []
        for turn in (1, 2):
            records = [turns[turn - 1] for turns in results]
            tools = [r["tool"] for r in records]
            chats = [r["chat"] for r in records]
            rows.append(
                {
                    "mode": mode,
                    "sessions": sessions,
                    "tool_tokens": tool_tokens,
                    "turn": turn,
                    "wall_s": round(wall, 2),
                    "tool_ms": summary_ms([t.last - t.submit for t in tools]),
                    "chat_ttft_ms": summary_ms([c.first - c.submit for c in chats]),
                    "turn_ttft_ms": summary_ms(
                        [c.first - r["start"] for r, c in zip(records, chats, strict=True)]
                    ),
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
            )
        return rows

    async def warm_up(self, sessions: int) -> None:
        """Prime the persona and Hammer prefixes, then run one throwaway scenario at the
        largest session count, so no batch shape meets a first-time compile when timed."""
        await self.chat.warm(persona_warm_prompt(self.chat.tokenizer, self.persona))
        await self.scenario(mode="concurrent", sessions=sessions, tool_tokens=10)


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


async def run(args: argparse.Namespace) -> dict[str, Any]:
    engine: dict[str, Any] = {
        "backend": "vllm",
        "model_cache_dir": args.cache_dir,
        "kv_dtype": args.kv_dtype,
        "quantization": args.quantization,
        "max_len": args.max_len,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "enforce_eager": args.enforce_eager,
    }
    tool_config = ToolConfig(model=args.tool_model, **engine)
    chat_config = ChatConfig(model=args.chat_model, sampling=CHAT_SAMPLING, **engine)
    tool = VllmEngine(tool_config, gpu_frac=args.tool_frac)
    chat = VllmEngine(chat_config, gpu_frac=args.chat_frac)
    starts = {}
    began = time.perf_counter()
    await tool.start()
    starts["tool_s"] = round(time.perf_counter() - began, 1)
    began = time.perf_counter()
    await chat.start()
    starts["chat_s"] = round(time.perf_counter() - began, 1)
    print(f"engines started: {starts}", flush=True)
    try:
        bench = Bench(tool, chat, Workload(chat_out=args.chat_out))
        await bench.warm_up(max(args.sessions))
        rows = []
        for sessions in args.sessions:
            for mode in args.modes:
                for tool_tokens in args.tool_tokens:
                    scenario_rows = await bench.scenario(
                        mode=mode, sessions=sessions, tool_tokens=tool_tokens
                    )
                    rows.extend(scenario_rows)
                    print(table(scenario_rows).splitlines()[-2], flush=True)
                    print(table(scenario_rows).splitlines()[-1], flush=True)
    finally:
        await chat.close()
        await tool.close()

    import vllm

    return {
        "device": device_name(),
        "host": platform.node(),
        "vllm": vllm.__version__,
        "command": " ".join([sys.executable, "-m", "bench.gpu_raw", *sys.argv[1:]]),
        "env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")},
        "engine_start": starts,
        "models": {
            "tool": args.tool_model,
            "chat": args.chat_model,
            "tool_path": tool.model_path,
            "chat_path": chat.model_path,
        },
        "engine_args": {
            "tool": engine_args(tool_config, gpu_frac=args.tool_frac, model_path=tool.model_path),
            "chat": engine_args(chat_config, gpu_frac=args.chat_frac, model_path=chat.model_path),
        },
        "workload": dataclasses.asdict(Workload(chat_out=args.chat_out)),
        "chat_sampling": msgspec_to_dict(CHAT_SAMPLING),
        "rows": rows,
    }


def msgspec_to_dict(value: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(value)


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_raw", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tool-model", default="random:qwen2.5-1.5b")
    parser.add_argument("--chat-model", default="random:llama-3.1-8b")
    parser.add_argument(
        "--cache-dir", default=os.environ.get("YAP_MODEL_CACHE", "~/.cache/yap-bus")
    )
    parser.add_argument("--sessions", type=int_list, default=[1, 8, 16, 32])
    parser.add_argument(
        "--modes", type=lambda s: s.split(","), default=["sequential", "concurrent"]
    )
    parser.add_argument("--tool-tokens", type=int_list, default=[10, 2])
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

    result = asyncio.run(run(args))
    print()
    print(
        f"device: {result['device']}  vLLM {result['vllm']}  engine start {result['engine_start']}"
    )
    tool_args, chat_args = result["engine_args"]["tool"], result["engine_args"]["chat"]
    print(
        f"tool {args.tool_model} @ {tool_args['gpu_memory_utilization']}, "
        f"chat {args.chat_model} @ {chat_args['gpu_memory_utilization']}; "
        f"quantization {chat_args['quantization']}, kv {chat_args['kv_cache_dtype']}, "
        f"max_len {chat_args['max_model_len']}, "
        f"max_num_batched_tokens {chat_args.get('max_num_batched_tokens', 'vLLM default')}"
    )
    print(table(result["rows"]))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
