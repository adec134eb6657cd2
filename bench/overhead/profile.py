"""py-spy samples of the edge and the actor, grouped by where the time goes."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["render_profile", "summarize_profile"]

# prefix) -> area. C code (uvloop, zlib, msgspec, syscalls) shows as its Python caller.
_AREAS: Final = (
    ("Runner.run", "", "event loop in C (uvloop: epoll, socket reads, timers, callbacks)"),
    ("Connection.send_data", "", "socket writes: WebSocket frames"),
    # The edge writes a connection's frames itself, one writelines per burst.
    ("FrameWriter.flush", "", "socket writes: WebSocket frames"),
    ("StreamWriter.writelines", "", "socket writes: NATS (nats-py flusher)"),
    ("", "websockets/extensions/permessage_deflate", "permessage-deflate (zlib)"),
    ("", "websockets/", "websockets (framing, send/recv)"),
    ("", "nats/", "nats-py (parse, subscriptions, publish)"),
    ("", "logging/", "logging"),
    ("", "bus/logs", "logging"),
    ("", "prometheus_client/", "prometheus metrics"),
    ("", "edge/", "edge code (protocol, turn machine, outbox)"),
    ("", "actors/engines/", "engine wrapper (bench pacing; vLLM stream, decoding)"),
    ("", "actors/prompts/", "prompt building (render, units, trimming)"),
    ("", "vllm/", "vLLM in the actor's process (input and output processing)"),
    ("", "tokenizers/", "tokenizers (Python side)"),
    ("", "transformers/", "transformers (template rendering; the CPU engine's model)"),
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
