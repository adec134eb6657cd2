"""``python -m actors {tool,chat} [--config PATH] [--actor-id ID]``: run one actor until
SIGINT/SIGTERM.

The actor id names the actor on the bus (its subjects, its bus user); whoever starts
the actor assigns it (``--actor-id`` or ``YAP_ACTOR_ID``, the launcher's replica
slot such as ``chat-0``, stable across restarts), else it is a random
``<kind>-<hex>``. Every process start also gets a fresh instance id of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import uuid
from typing import Literal

from actors.chat import ChatWorker
from actors.engines import build_engine
from actors.service import ActorService
from actors.tool import ToolWorker
from bus.codec import Codec
from bus.logs import setup_logging
from bus.loop import loop_factory
from bus.metrics_http import MetricsServer
from bus.subjects import InvalidSessionId, validate_id
from configs import ConfigError, load_config
from configs.schema import Config


async def _run(config: Config, kind: Literal["tool", "chat"], actor_id: str) -> int:
    log = setup_logging(config.log.level, config.log.format, kind)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    engine = build_engine(config, kind)
    worker = (
        ToolWorker(config.tool, engine)
        if kind == "tool"
        else ChatWorker(config.chat, engine, actor_id)
    )
    service = ActorService(
        config=config.actor,
        actor_id=actor_id,
        engine=engine,
        worker=worker,
        bus=config.bus,
        codec=Codec(),
        log=log,
    )
    port = config.actor.tool_metrics_port if kind == "tool" else config.actor.chat_metrics_port
    async with contextlib.AsyncExitStack() as stack:
        if port:
            metrics = await stack.enter_async_context(
                MetricsServer(service.metrics.registry, config.actor.metrics_host, port)
            )
            log.info(
                "%s actor metrics on http://%s:%d/metrics",
                kind,
                config.actor.metrics_host,
                metrics.port,
            )
        await stack.enter_async_context(service)
        fatal = asyncio.create_task(service.fatal.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({fatal, stopped}, return_when=asyncio.FIRST_COMPLETED)
        fatal.cancel()
        stopped.cancel()
        log.info(
            "%s actor stopping (%s)", kind, "engine dead" if service.fatal.is_set() else "signal"
        )
        return 1 if service.fatal.is_set() else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m actors", description=__doc__)
    parser.add_argument("kind", choices=["tool", "chat"])
    parser.add_argument("--config", help="TOML deployment file (default: the CPU config)")
    parser.add_argument(
        "--actor-id", help="this actor's id (default: $YAP_ACTOR_ID, else <kind>-<random hex>)"
    )
    args = parser.parse_args()
    try:
        config = load_config(args.config, os.environ)
        # The launcher names replica slots (chat-1) so that an id survives restarts.
        actor_id = validate_id(
            args.actor_id
            or os.environ.get("YAP_ACTOR_ID")
            or f"{args.kind}-{uuid.uuid4().hex[:10]}"
        )
    except (ConfigError, InvalidSessionId) as exc:
        sys.exit(f"actors: {exc}")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        sys.exit(runner.run(_run(config, args.kind, actor_id)))


if __name__ == "__main__":
    main()
