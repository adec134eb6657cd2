"""CPU cost of building one turn's prompts, the work an actor does before its engine.

Each turn the ToolActor builds the Hammer prompt (history trimmed to 300 tokens) and
the ChatActor the chat prompt (persona, history trimmed to 3,000 tokens, utterance);
then the engine tokenizes the prompt text again. All of it runs on the actor's event
loop, so in a burst of N sessions the last one waits for N of these. The workload is
the GPU benchmark's (``bench.gpu_raw``): persona ~900 tokens, ~30-token utterance, a
history of each size asked for.

Usage::

    python -m bench.prompt_cost                      # tiny-qwen2's tokenizer
    python -m bench.prompt_cost --model /path/to/model --history-tokens 1500,6000
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.prompts.chat import build_chat_prompt
from actors.prompts.hammer import build_tool_prompt
from actors.prompts.trim import trim_history
from bench.gpu_raw import history_of, text_of_tokens

TOOL_HISTORY_MAX = 300
CHAT_HISTORY_MAX = 3000


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # the first call pays for lazy imports and caches
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def load_tokenizer(model: str, cache_dir: Path) -> Any:
    from transformers import AutoTokenizer

    if model.startswith("tiny-"):
        from actors.models import ensure_tiny_model

        return AutoTokenizer.from_pretrained(ensure_tiny_model(cache_dir, model))
    return AutoTokenizer.from_pretrained(model)


def measure(tokenizer: Any, history_tokens: int, repeat: int) -> dict[str, float]:
    rng = random.Random(history_tokens)
    persona = text_of_tokens(tokenizer, rng, 900)
    utterance = text_of_tokens(tokenizer, rng, 30)
    history = history_of(tokenizer, rng, history_tokens)

    def tool() -> str:
        return build_tool_prompt(
            tokenizer,
            user_utterance=utterance,
            history_text=history,
            history_max_tokens=TOOL_HISTORY_MAX,
        )

    def chat() -> str:
        return build_chat_prompt(
            tokenizer,
            persona_text=persona,
            history_text=history,
            user_utterance=utterance,
            history_max_tokens=CHAT_HISTORY_MAX,
        ).text

    tool_text, chat_text = tool(), chat()
    return {
        "history tokens": len(tokenizer.encode(history, add_special_tokens=False)),
        "chat prompt tokens": len(tokenizer.encode(chat_text, add_special_tokens=False)),
        "tool prompt ms": median_ms(tool, repeat),
        "chat prompt ms": median_ms(chat, repeat),
        "  of which trim_history ms": median_ms(
            lambda: trim_history(tokenizer, history, CHAT_HISTORY_MAX), repeat
        ),
        "engine encode, tool ms": median_ms(
            lambda: tokenizer.encode(tool_text, add_special_tokens=False), repeat
        ),
        "engine encode, chat ms": median_ms(
            lambda: tokenizer.encode(chat_text, add_special_tokens=False), repeat
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-qwen2", help="tiny-* or a model directory")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/yap-bus").expanduser())
    parser.add_argument("--history-tokens", default="1500,3000,6000")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)

    tokenizer = load_tokenizer(args.model, args.cache_dir)
    sizes = [int(s) for s in args.history_tokens.split(",")]
    rows = {size: measure(tokenizer, size, args.repeat) for size in sizes}
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; tokenizer of {args.model} "
        f"({len(tokenizer)} tokens); median of {args.repeat}, ms"
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
