"""Warmup client: one turn, streamed to the terminal, then its metrics.

``python -m clients.warmup [--gender G] [--style S] [message words...]`` connects,
sends one ``start``, prints the ACK, the tool decision and its latency, streams the
reply as it arrives and ends with two JSON lines, ``{"type": "metrics", ...}`` and
``{"type": "final_text", ...}``, exactly as the original ``test/warmup.py``.

``--turns N`` holds a conversation of N turns in one session (the message, then the
default messages in turn): each turn sends the history so far in the canonical
format (``bus.history``), so from the second turn on the chat actor's next-turn
warming shows as ``cached_tokens`` in the ``{"type": "usage", ...}`` line it prints
after each turn's metrics. With ``--server-history`` the edge keeps the history
instead: each start carries only its utterance (and ``server_history``), and the
warm hit should be the same.

Env (read in ``main`` only): ``SERVER_WS_URL`` (``ws://127.0.0.1:8000/ws``),
``YAP_API_KEY`` (``yap_token``), ``ASSISTANT_GENDER`` (``female``),
``PERSONA_STYLE`` (``wholesome``), ``RECV_TIMEOUT_SEC`` (``60``).
Exit status: 0 when the turn completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from websockets.exceptions import InvalidStatus

from bus.history import append_turn
from bus.loop import loop_factory
from clients.metrics import TimedFrame
from clients.turn import (
    FrameStream,
    TurnResult,
    TurnTimeout,
    collect_turn,
    open_stream,
    start_message,
)

__all__ = ["DEFAULT_MESSAGES", "WarmupConfig", "amain", "main", "parse_args", "run_warmup"]

DEFAULT_URL = "ws://127.0.0.1:8000/ws"
DEFAULT_API_KEY = "yap_token"
DEFAULT_MESSAGES = (
    "who was Columbus?",
    "tell me something funny",
    "what's your story?",
    "you gotta see these boots, insane",
    "check this out",
)
GENDERS = ("female", "male", "woman", "man")
HINTS = {
    "authentication_failed": "Check the YAP_API_KEY environment variable",
    "server_at_capacity": "Server is at maximum connection capacity. Try again later.",
}


@dataclass(frozen=True, slots=True)
class WarmupConfig:
    url: str
    api_key: str
    assistant_gender: str
    persona_style: str
    recv_timeout_s: float
    message: str
    turns: int = 1
    server_history: bool = False


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> WarmupConfig:
    """Build the config from command-line arguments, with ``env`` for defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m clients.warmup", description="Run one Yap turn and print its metrics."
    )
    parser.add_argument("message", nargs="*", help="user utterance (default: a random one)")
    parser.add_argument(
        "--assistant-gender", "--gender", "-g", dest="assistant_gender", choices=GENDERS
    )
    parser.add_argument("--persona-style", "--style", "-s", dest="persona_style")
    parser.add_argument(
        "--turns", type=int, default=1, help="turns of one conversation (default: 1)"
    )
    parser.add_argument(
        "--server-history",
        action="store_true",
        help="let the server keep the conversation: send only the utterances",
    )
    args = parser.parse_args(list(argv))
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    try:
        recv_timeout_s = float(env.get("RECV_TIMEOUT_SEC", "60"))
    except ValueError:
        parser.error("RECV_TIMEOUT_SEC must be a number of seconds")
    message = " ".join(args.message).strip() or random.choice(DEFAULT_MESSAGES)
    return WarmupConfig(
        url=env.get("SERVER_WS_URL", DEFAULT_URL),
        api_key=env.get("YAP_API_KEY", DEFAULT_API_KEY),
        assistant_gender=args.assistant_gender or env.get("ASSISTANT_GENDER", "female"),
        persona_style=args.persona_style or env.get("PERSONA_STYLE", "wholesome"),
        recv_timeout_s=recv_timeout_s,
        message=message,
        turns=args.turns,
        server_history=args.server_history,
    )


class _Printer:
    """Prints frames as they arrive; knows when the turn was sent to time them."""

    def __init__(self, out: TextIO, sent_at: float) -> None:
        self._out = out
        self._sent_at = sent_at
        self.streaming = False

    def _line(self, text: str) -> None:
        if self.streaming:
            self._out.write("\n")
            self.streaming = False
        self._out.write(text + "\n")
        self._out.flush()

    def _ms(self, frame: TimedFrame) -> float:
        return round((frame.at - self._sent_at) * 1000.0, 2)

    def __call__(self, frame: TimedFrame) -> None:
        data = frame.data
        if frame.type == "ack" and data.get("for") == "start":
            self._line(
                f"ACK start → seed={data.get('seed')} now='{data.get('now')}' "
                f"gender={data.get('assistant_gender')} style={data.get('persona_style')} "
                f"models={data.get('models', {})}"
            )
        elif frame.type == "toolcall":
            self._line(f"TOOLCALL status={data.get('status')} raw={data.get('raw')}")
            self._line(f"TOOLCALL ttfb_ms={self._ms(frame)}")
        elif frame.type == "token":
            if not self.streaming:
                self._line(f"CHAT ttfb_ms={self._ms(frame)}")
                self.streaming = True
            text = data.get("text")
            self._out.write(text if isinstance(text, str) else "")
            self._out.flush()

    def finish(self) -> None:
        if self.streaming:
            self._out.write("\n")
            self.streaming = False


def _report(result: TurnResult, out: TextIO) -> None:
    for code, message in zip(result.error_codes, result.error_messages, strict=True):
        out.write(f"[ERROR] {code}: {message}\n")
        if code in HINTS:
            out.write(f"[HINT] {HINTS[code]}\n")
    if result.ack is None:
        out.write("[WARN] no ACK(start) received from server\n")
    if result.done:
        metrics = {"type": "metrics", "ok": not result.cancelled, **result.metrics().as_dict()}
        out.write(json.dumps(metrics, ensure_ascii=False) + "\n")
        out.write(json.dumps({"type": "final_text", "text": result.text}, ensure_ascii=False))
        out.write("\n")
    out.flush()


async def run_warmup(config: WarmupConfig, out: TextIO) -> int:
    """Run ``config.turns`` turns against ``config.url``, printing to ``out``.

    Returns the exit status: 0 when every turn completed.
    """
    out.write(f"Connecting to {config.url} (with API key auth) …\n")
    out.flush()
    session_id = str(uuid.uuid4())
    messages = [config.message, *(m for m in DEFAULT_MESSAGES if m != config.message)]
    history = ""
    try:
        async with open_stream(config.url, config.api_key) as stream:
            for turn in range(config.turns):
                message = messages[turn % len(messages)]
                if config.turns > 1:
                    out.write(f"--- turn {turn + 1}: {message}\n")
                result = await _one_turn(stream, config, session_id, message, history, out)
                if result is None:
                    return 1
                _report(result, out)
                if config.turns > 1:
                    out.write(json.dumps({"type": "usage", **(result.usage or {})}) + "\n")
                if not result.ok:
                    return 1
                # What the client was sent is the reply it keeps (bus.history); with
                # --server-history the edge appends the same line itself.
                if not config.server_history:
                    history = append_turn(history, message, result.text)
    except InvalidStatus as exc:
        out.write(f"[ERROR] handshake refused: HTTP {exc.response.status_code}\n")
        return 1
    except (OSError, TimeoutError) as exc:
        out.write(f"[ERROR] cannot connect to {config.url}: {exc}\n")
        return 1
    return 0


async def _one_turn(
    stream: FrameStream,
    config: WarmupConfig,
    session_id: str,
    message: str,
    history: str,
    out: TextIO,
) -> TurnResult | None:
    """One turn, streamed to ``out``; None after a receive timeout (reported)."""
    start = start_message(
        session_id,
        message,
        assistant_gender=config.assistant_gender,
        persona_style=config.persona_style,
        history_text=history,
        server_history=config.server_history,
    )
    sent_at = await stream.send(start)
    printer = _Printer(out, sent_at)
    try:
        result = await collect_turn(
            stream, sent_at, recv_timeout_s=config.recv_timeout_s, on_frame=printer
        )
    except TurnTimeout as exc:
        printer.finish()
        out.write("[ERROR] recv timeout\n")
        out.flush()
        if exc.partial.ack is None:
            out.write("[WARN] no ACK(start) received from server\n")
        return None
    printer.finish()
    return result


async def amain(argv: Sequence[str], env: Mapping[str, str], out: TextIO) -> int:
    return await run_warmup(parse_args(argv, env), out)


def main() -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            status = runner.run(amain(sys.argv[1:], os.environ, sys.stdout))
        except KeyboardInterrupt:
            status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
