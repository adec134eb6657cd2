"""The full stack on a GPU: WebSocket client -> edge -> NATS -> actors -> vLLM.

The same workload as ``bench/gpu_raw.py`` (persona ~900 tokens shared and warmed
once, history ~1500 tokens per session, ~30-token utterance, 200 tokens out; N
sessions at once, two turns each, turn 2 reusing persona and history), sent as the
protocol's own messages to a running system (``just up --config configs/gpu.toml``).
Times are measured by the client, from sending ``start``.

    python -m bench.gpu_fullstack --tokenizer DIR --sessions 1,16 --out fullstack.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from transformers import AutoTokenizer

from bench.gpu_raw import history_of, summary_ms, text_of_tokens
from clients.turn import FrameStream, TurnResult, open_stream, run_turn

__all__ = ["main"]


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
    completion = int((result.usage or {}).get("completion_tokens", 0))
    per_token = None
    if len(tokens) >= 2 and completion >= 2:
        per_token = (tokens[-1] - tokens[0]) / (completion - 1)
    sec = lambda ms: None if ms is None else ms / 1000  # noqa: E731
    return {
        "tool": sec(metrics.ttfb_toolcall_ms),
        "ttft": sec(metrics.ttfb_chat_ms),
        "first_sentence": sec(metrics.time_to_first_complete_sentence_ms),
        "per_token": per_token,
        "cached": float((result.usage or {}).get("cached_tokens", 0)),
    }


async def _scenario(
    url: str, api_key: str, tokenizer: Any, persona: str, sessions: int, seed: int
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    histories = [history_of(tokenizer, rng, 1500) for _ in range(sessions)]
    utterances = [text_of_tokens(tokenizer, rng, 30, "Hey, ") for _ in range(sessions)]
    ids = [f"gpu-{seed}-{i}-{uuid.uuid4().hex[:6]}" for i in range(sessions)]
    rows = []
    async with asyncio.TaskGroup() as group:
        streams = [group.create_task(_enter(open_stream(url, api_key))) for _ in range(sessions)]
    opened = [t.result() for t in streams]
    try:
        for turn in (1, 2):
            results = await asyncio.gather(
                *(
                    run_turn(
                        stream,
                        _start(ids[i], persona, histories[i], utterances[i]),
                        recv_timeout_s=120,
                    )
                    for i, (stream, _ctx) in enumerate(opened)
                )
            )
            failed = [r.error_codes for r in results if not r.ok]
            timings = [_timings(r) for r in results if r.ok]
            row: dict[str, Any] = {
                "sessions": sessions,
                "turn": turn,
                "ok": len(timings),
                "failed": failed[:3],
            }
            for key in ("tool", "ttft", "first_sentence", "per_token"):
                row[key] = summary_ms([t[key] for t in timings if t[key] is not None])
            row["cached_tokens_p50"] = (
                sorted(t["cached"] for t in timings)[len(timings) // 2] if timings else 0
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
            # Turn 2 continues the conversation with a ~200-token reply of plain words,
            # as gpu_raw.py does: the random model's own text re-tokenizes into far
            # more tokens and would push the history past its trim limit.
            for i in range(sessions):
                reply = text_of_tokens(tokenizer, rng, 200)
                histories[i] += f"\nUser: {utterances[i]}\nAssistant: {reply}"
    finally:
        for _stream, ctx in opened:
            await ctx.__aexit__(None, None, None)
    return rows


async def _enter(ctx: Any) -> tuple[FrameStream, Any]:
    return await ctx.__aenter__(), ctx


async def _run(args: argparse.Namespace) -> list[dict[str, Any]]:
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    persona = text_of_tokens(tokenizer, random.Random(0), 900, "You are June, a warm companion. ")
    # Warm the persona once, as a deployment's sessions do before speaking.
    async with open_stream(args.url, args.api_key) as stream:
        await stream.send(
            {
                "type": "start",
                "session_id": "warmup",
                "assistant_gender": "f",
                "persona_text": persona,
                "user_utterance": "hi",
            }
        )
        await _drain(stream)
        await stream.send({"type": "warm_persona", "persona_text": persona})
        await _drain(stream, until="warmed")
    rows = []
    for n in args.sessions:
        began = time.perf_counter()
        rows += await _scenario(args.url, args.api_key, tokenizer, persona, n, seed=n)
        print(f"# {n} sessions in {time.perf_counter() - began:.1f} s", flush=True)
    return rows


async def _drain(stream: FrameStream, until: str = "done") -> None:
    async with asyncio.timeout(120):
        while (await stream.receive(120)).type != until:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_fullstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws")
    parser.add_argument("--api-key", default="yap_token")
    parser.add_argument("--tokenizer", required=True, help="the chat model's directory")
    parser.add_argument(
        "--sessions", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16]
    )
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = asyncio.run(_run(args))
    if args.out:
        with open(args.out, "w") as file:
            json.dump(rows, file, indent=1)
    return 0 if all(not r["failed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
