"""CPU cost of building one turn's prompts, the work an actor does before its engine.

Two paths, measured in the same run on the same texts:

* **old** (the actors before issue 8): the ToolActor builds the Hammer prompt text
  (history trimmed to 300 tokens by encoding it), the ChatActor the chat prompt text
  (history trimmed to 3,000 tokens by encoding it, the template rendered three
  times, control tokens defused three times); then the engine encodes the whole
  prompt text again. All of it on the actor's event loop.
* **new** (``ChatPrompts`` / ``ToolPrompts``): one render, the prompt's ids from a
  cache of per-unit ids; a turn encodes its utterance and the history's new lines,
  long encodes in a thread pool with the GIL released.

A session's turns follow one another as they do in production: each turn's history
is the previous one plus that exchange, in the canonical format of ``bus.history``.
The workload is the GPU benchmark's (``bench.gpu_raw``): persona ~900 tokens,
~30-token utterance, a ~200-token reply, a history of each size asked for.

Figures, median over ``--repeat`` turns, milliseconds:

* *loop CPU*: CPU time of the event loop's thread while it builds the prompt
  (``time.thread_time``; the pool's threads are not counted, time spent waiting for
  them is not CPU). The old path runs entirely on the loop, so its loop CPU is its
  wall time.
* *wall*: from asking for the prompt to having its ids.
* *cold*: a session's first turn (its history never seen).
* *burst of 16*: 16 sessions' cold first turns started at once on one loop: wall
  time until the last prompt is ready (the old path queues them one after the
  other), and the loop's longest stall meanwhile.
* *vLLM detokenizer prefill*: what vLLM's own detokenizer (``DecodeStream`` primed
  with the prompt) spends on the chat prompt at the first token, per request, on
  the actor's loop; the actors now ask vLLM for ids only and pay none of it.

Usage::

    python -m bench.prompt_cost                      # tiny-qwen2's tokenizer
    python -m bench.prompt_cost --model gpu:llama-3.1-8b --history-tokens 1500
    python -m bench.prompt_cost --model /path/to/model --history-tokens 1500,6000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from actors.prompts.chat import HISTORY_LABEL, ChatPrompts, _prefix, _probe_render
from actors.prompts.hammer import TAKE_SCREENSHOT_TOOL, ToolPrompts, _head_sections, _render
from actors.prompts.sanitize import neutralize_control_tokens
from actors.prompts.trim import trim_to_tokens, trim_tokens_stepped
from actors.prompts.units import UnitEncoder, prompt_pool
from bench.gpu_raw import history_of, text_of_tokens
from bus.history import append_turn

TOOL_HISTORY_MAX = 300
CHAT_HISTORY_MAX = 3000
UTTERANCE_MAX = 350
BURST = 16
_TOOLS = (TAKE_SCREENSHOT_TOOL,)


# -- the old path (main before issue 8), kept to compare ------------------------------


def old_tool_ids(tokenizer: Any, utterance: str, history: str) -> list[int]:
    """The old ToolActor's prompt text, then the engine's encode of it."""
    trimmed = trim_tokens_stepped(
        tokenizer, neutralize_control_tokens(tokenizer, history.strip()), TOOL_HISTORY_MAX
    ).strip()
    query = trim_to_tokens(
        tokenizer, neutralize_control_tokens(tokenizer, utterance.strip()), UTTERANCE_MAX, "start"
    )
    text = _render(tokenizer, _head_sections(_TOOLS), trimmed, query)
    return list(tokenizer.encode(text, add_special_tokens=False))


def old_chat_ids(tokenizer: Any, persona: str, history: str, utterance: str) -> list[int]:
    """The old ChatActor's prompt text with its prefixes, then the engine's encode."""
    head = [{"role": "system", "content": neutralize_control_tokens(tokenizer, persona)}]
    trimmed = trim_tokens_stepped(
        tokenizer, neutralize_control_tokens(tokenizer, history.strip()), CHAT_HISTORY_MAX
    ).strip()
    if trimmed:
        head.append({"role": "system", "content": HISTORY_LABEL + trimmed})
    query = trim_to_tokens(
        tokenizer, neutralize_control_tokens(tokenizer, utterance.strip()), UTTERANCE_MAX, "start"
    )
    messages = [*head, {"role": "user", "content": query}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    persona_prefix = _prefix(tokenizer, head[:1], text, "")
    if len(head) > 1:
        _prefix(tokenizer, head, text, persona_prefix)
    _probe_render(tokenizer, head)  # the third render: the prefixes' own
    return list(tokenizer.encode(text, add_special_tokens=False))


# -- measuring -------------------------------------------------------------------------


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


async def timed(build: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Loop-thread CPU and wall seconds of one build."""
    cpu, wall = time.thread_time(), time.perf_counter()
    await build()
    return time.thread_time() - cpu, time.perf_counter() - wall


async def loop_stall_during(work: Awaitable[object]) -> tuple[float, float]:
    """Wall seconds of ``work`` and the event loop's longest stall meanwhile: how late a
    1 ms timer fired at worst (what any other session's next event would wait)."""
    worst = 0.0
    running = True
    tick = 0.001

    async def probe() -> None:
        nonlocal worst
        while running:
            due = time.perf_counter() + tick
            await asyncio.sleep(tick)
            worst = max(worst, time.perf_counter() - due)

    watcher = asyncio.ensure_future(probe())
    began = time.perf_counter()
    await work
    wall = time.perf_counter() - began
    running = False
    await watcher
    return wall, worst


class Session:
    """One conversation's texts, turn after turn, in the canonical history format."""

    def __init__(self, tokenizer: Any, rng: random.Random, persona: str, history: str) -> None:
        self._tokenizer = tokenizer
        self._rng = rng
        self.persona = persona
        self.history = history
        self._size = len(history)
        self.utterance = text_of_tokens(tokenizer, rng, 30, "Hey, ")

    def advance(self) -> None:
        """The next turn: this exchange appended, the oldest lines dropped to keep the
        history at its size (so a figure is the size it says, not a growing one)."""
        reply = text_of_tokens(self._tokenizer, self._rng, 200)
        history = append_turn(self.history, self.utterance, reply)
        while len(history) > self._size and "\n" in history:
            history = history.split("\n", 1)[1]
        self.history = history
        self.utterance = text_of_tokens(self._tokenizer, self._rng, 30, "Hey, ")


async def measure(tokenizer: Any, history_tokens: int, repeat: int) -> dict[str, float]:
    rng = random.Random(history_tokens)
    persona = text_of_tokens(tokenizer, rng, 900, "You are June, a warm companion. ")
    session = Session(tokenizer, rng, persona, history_of(tokenizer, rng, history_tokens))
    pool = prompt_pool("bench")
    try:
        encoder = UnitEncoder(tokenizer, pool)
        chat = ChatPrompts(encoder, history_max_tokens=CHAT_HISTORY_MAX)
        tool = ToolPrompts(UnitEncoder(tokenizer, pool), history_max_tokens=TOOL_HISTORY_MAX)

        def chat_turn() -> Awaitable[list[int]]:
            return chat.turn(
                persona_text=session.persona,
                history_text=session.history,
                user_utterance=session.utterance,
            )

        def tool_turn() -> Awaitable[list[int]]:
            return tool.turn(user_utterance=session.utterance, history_text=session.history)

        row: dict[str, float] = {}
        cold_chat = await timed(chat_turn)
        cold_tool = await timed(tool_turn)
        first_ids = await chat_turn()
        old_ids = old_chat_ids(tokenizer, session.persona, session.history, session.utterance)
        if first_ids != old_ids and history_tokens < CHAT_HISTORY_MAX * 2 // 3:
            # Both paths trim only past the budget; below it the prompts must agree.
            raise AssertionError("the old and new chat paths disagree on an untrimmed history")
        row["history tokens"] = len(tokenizer.encode(session.history, add_special_tokens=False))
        row["chat prompt tokens"] = len(first_ids)

        old_tool, old_chat, new_tool, new_chat = [], [], [], []
        for _ in range(repeat):
            session.advance()
            old_tool.append(
                (await timed(_sync(old_tool_ids, tokenizer, session.utterance, session.history)))[0]
            )
            old_chat.append(
                (
                    await timed(
                        _sync(
                            old_chat_ids,
                            tokenizer,
                            session.persona,
                            session.history,
                            session.utterance,
                        )
                    )
                )[0]
            )
            new_tool.append(await timed(tool_turn))
            new_chat.append(await timed(chat_turn))
        row["old: tool prompt, loop"] = median_ms(old_tool)
        row["old: chat prompt, loop"] = median_ms(old_chat)
        row["new: tool turn, loop CPU"] = median_ms([cpu for cpu, _ in new_tool])
        row["new: chat turn, loop CPU"] = median_ms([cpu for cpu, _ in new_chat])
        row["new: chat turn, wall"] = median_ms([wall for _, wall in new_chat])
        row["new: cold chat, loop CPU"] = cold_chat[0] * 1e3
        row["new: cold chat, wall"] = cold_chat[1] * 1e3
        row["new: cold tool, loop CPU"] = cold_tool[0] * 1e3

        # A burst of cold sessions on one loop, each path on its own fresh texts.
        sessions = [
            Session(tokenizer, rng, persona, history_of(tokenizer, rng, history_tokens))
            for _ in range(BURST)
        ]

        async def old_burst() -> None:
            for s in sessions:
                await asyncio.sleep(0)  # each start is its own handler call
                old_chat_ids(tokenizer, s.persona, s.history, s.utterance)

        wall, stall = await loop_stall_during(old_burst())
        row[f"old: burst of {BURST}, wall"] = wall * 1e3
        row[f"old: burst of {BURST}, stall"] = stall * 1e3
        burst_chat = ChatPrompts(UnitEncoder(tokenizer, pool), history_max_tokens=CHAT_HISTORY_MAX)
        await burst_chat.persona_prefix(persona_text=persona)  # the persona is warm, as in prod
        wall, stall = await loop_stall_during(
            asyncio.gather(
                *(
                    burst_chat.turn(
                        persona_text=s.persona, history_text=s.history, user_utterance=s.utterance
                    )
                    for s in sessions
                )
            )
        )
        row[f"new: burst of {BURST}, wall"] = wall * 1e3
        row[f"new: burst of {BURST}, stall"] = stall * 1e3
        row["vLLM detokenizer prefill"] = decode_stream_prefill_ms(tokenizer, first_ids)
        return row
    finally:
        pool.shutdown(wait=True)


def decode_stream_prefill_ms(tokenizer: Any, prompt_ids: list[int]) -> float:
    """What vLLM's detokenizer spends at a request's first token: a DecodeStream primed
    with the prompt decodes all of it (median of 5), minus an empty stream's step."""
    from tokenizers.decoders import DecodeStream

    backend = tokenizer.backend_tokenizer
    token = prompt_ids[-1]
    samples = []
    for _ in range(5):
        began = time.perf_counter()
        stream = DecodeStream(ids=prompt_ids, skip_special_tokens=True)
        stream.step(backend, token)
        middle = time.perf_counter()
        DecodeStream(skip_special_tokens=True).step(backend, token)
        samples.append((middle - began) - (time.perf_counter() - middle))
    return median_ms(samples)


def _sync(fn: Callable[..., object], *args: Any) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        return fn(*args)

    return run


def load_tokenizer(model: str, cache_dir: Path) -> Any:
    from transformers import AutoTokenizer

    if model.startswith("tiny-"):
        from actors.models import ensure_tiny_model

        return AutoTokenizer.from_pretrained(ensure_tiny_model(cache_dir, model))
    if model.startswith("gpu:"):
        from actors.models.gpu import GPU_SHAPES, build_tokenizer

        return build_tokenizer(GPU_SHAPES[model.removeprefix("gpu:")].vocab_size)
    return AutoTokenizer.from_pretrained(model)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="tiny-qwen2", help="tiny-*, gpu:<shape> or a model directory"
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/yap-bus").expanduser())
    parser.add_argument("--history-tokens", default="1500,3000,6000")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)

    tokenizer = load_tokenizer(args.model, args.cache_dir)
    sizes = [int(s) for s in args.history_tokens.split(",")]
    rows = {size: asyncio.run(measure(tokenizer, size, args.repeat)) for size in sizes}
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; tokenizer of {args.model} "
        f"({len(tokenizer)} tokens), split level {UnitEncoder(tokenizer).level}; "
        f"median of {args.repeat} turns, ms"
    )
    names = list(next(iter(rows.values())))
    print(f"{'':28s}" + "".join(f"{size:>10d}" for size in sizes))
    for name in names:
        cells = "".join(
            f"{rows[s][name]:>10.0f}" if "tokens" in name else f"{rows[s][name]:>10.2f}"
            for s in sizes
        )
        print(f"{name:28s}{cells}")


if __name__ == "__main__":
    main()
