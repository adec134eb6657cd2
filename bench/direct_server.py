"""The overhead benchmark's baseline: the bench engine behind a bare WebSocket server.

``python -m bench.direct_server --port N --rate R [--tokens T] [--stamp] [--abort-log PATH]``

One process, one event loop (uvloop), no bus, no actor, no auth, no sessions: a
``start`` calls ``BenchEngine.generate`` in this process and each delta goes out at
once as a ``{"type":"token"}`` frame, then ``final`` and ``done``. It speaks the
subset of the edge's frames that a benchmark turn uses, so one client measures
both and the difference is what the edge, NATS and the actor add:

* ``start`` -> ``ack`` (``for: "start"``, ``turn_id``), ``token``..., ``final``, ``done``;
* ``cancel`` -> ``engine.abort(request_id)``, then ``{"type":"done","cancelled":true}``;
* a ``start`` while a turn runs aborts that turn silently (barge-in);
* ``ping`` -> ``pong``; ``GET /healthz`` -> 200.

Frames are JSON text encoded by one msgspec encoder, as the edge does, and the
connection's settings are the websockets defaults the edge also uses
(permessage-deflate included), so both sides do the same per-frame work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import logging
import signal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from actors.engines.base import SamplingSpec
from actors.engines.bench import BenchEngine
from bus.events import request_id
from configs.schema import EngineConfig

__all__ = ["DirectServer", "main"]

HEALTH_PATH = "/healthz"


@dataclass(slots=True)
class _Turn:
    turn_id: str
    request_id: str
    cancelled: bool = False
    task: asyncio.Task[None] | None = None
    text: list[str] = field(default_factory=list)


class DirectServer:
    """Serves benchmark turns straight from one :class:`BenchEngine`.

    Args:
        engine: the engine every connection shares (as actors share theirs).
        tokens: deltas per turn (the actor's ``chat.max_out``).
    """

    def __init__(self, engine: BenchEngine, tokens: int) -> None:
        self._engine = engine
        self._sampling = SamplingSpec(max_tokens=tokens)
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder().decode
        self._log = logging.getLogger("bench.direct")

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        """One connection: a reader loop and at most one turn task, in one TaskGroup."""
        session_id = uuid.uuid4().hex
        turn: _Turn | None = None
        try:
            async with asyncio.TaskGroup() as group:
                async for raw in ws:
                    try:
                        message: Any = self._decode(raw)
                        kind = message.get("type")
                    except (msgspec.DecodeError, AttributeError):
                        await self._send(ws, {"type": "error", "error_code": "invalid_json"})
                        continue
                    match kind:
                        case "start":
                            await self._stop(turn)
                            session_id = str(message.get("session_id") or session_id)
                            turn_id = uuid.uuid4().hex
                            turn = _Turn(turn_id, request_id("chat", session_id, turn_id))
                            await self._send(
                                ws, {"type": "ack", "for": "start", "turn_id": turn_id}
                            )
                            prompt = str(message.get("user_utterance", ""))
                            turn.task = group.create_task(self._stream(ws, turn, prompt))
                        case "cancel":
                            await self._stop(turn)
                            turn = None
                            await self._send(ws, {"type": "done", "cancelled": True})
                        case "ping":
                            await self._send(ws, {"type": "pong"})
                        case _:
                            await self._send(
                                ws, {"type": "error", "error_code": "unknown_message_type"}
                            )
                await self._stop(turn)
        except* ConnectionClosed:
            pass
        finally:
            await self._stop(turn)

    async def _stop(self, turn: _Turn | None) -> None:
        """End ``turn`` at once: the engine hears the abort, the client hears nothing more."""
        if turn is None or turn.cancelled:
            return
        turn.cancelled = True
        await self._engine.abort(turn.request_id)

    async def _stream(self, ws: ServerConnection, turn: _Turn, prompt: str) -> None:
        if turn.cancelled:
            return  # cancelled before it began: the engine never saw it
        last = None
        # The bench engine's tokenizer is one id per character: nothing to measure here.
        prompt_ids = self._engine.tokenizer.encode(prompt, add_special_tokens=False)
        async for output in self._engine.generate(prompt_ids, self._sampling, turn.request_id):
            last = output
            if turn.cancelled:
                continue  # the abort output comes next and ends the stream
            if output.text:
                turn.text.append(output.text)
                await self._send(ws, {"type": "token", "text": output.text})
        if turn.cancelled or last is None:
            return
        await self._send(
            ws, {"type": "final", "normalized_text": " ".join("".join(turn.text).split())}
        )
        await self._send(
            ws,
            {
                "type": "done",
                "usage": {
                    "prompt_tokens": last.prompt_tokens,
                    "completion_tokens": last.completion_tokens,
                },
            },
        )

    async def _send(self, ws: ServerConnection, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(self._encode(frame).decode())


async def _serve(host: str, port: int, config: EngineConfig, tokens: int) -> None:
    engine = BenchEngine(config)
    server = DirectServer(engine, tokens)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with serve(server.handle, host, port, process_request=server.process_request):
            logging.getLogger("bench.direct").info("direct server ready on %s:%d", host, port)
            await stop.wait()
    finally:
        await engine.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.direct_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=200.0, help="tokens/s per turn")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per turn")
    parser.add_argument("--stamp", action="store_true", help="stamp deltas with their emit time")
    parser.add_argument("--abort-log", help="append '<request_id> <monotonic_ns>' per abort")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = EngineConfig(
        backend="bench",
        model="direct",
        bench_tokens_per_s=args.rate,
        bench_stamp=args.stamp,
        bench_abort_log=args.abort_log,
    )
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args.host, args.port, config, args.tokens))


if __name__ == "__main__":
    main()
