"""``python -m edge [--config PATH] [--edge-id ID]``: run one edge process until
SIGINT/SIGTERM.

The edge id names the edge on the bus (its subjects, inbox and bus user):
``--edge-id`` or ``YAP_EDGE_ID`` (the launcher's ``edge-0``, ``edge-1``...), else a
random ``edge-<hex>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid

from bus.logs import setup_logging
from bus.loop import loop_factory
from bus.subjects import InvalidSessionId, validate_id
from configs import ConfigError, load_config
from configs.schema import Config
from edge.server import EdgeServer


async def _run(config: Config, edge_id: str) -> None:
    log = setup_logging(config.log.level, config.log.format, "edge")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EdgeServer(config, log, edge_id=edge_id):
        await stop.wait()
        log.info("edge got a stop signal")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m edge", description=__doc__)
    parser.add_argument("--config", help="TOML deployment file (default: the CPU config)")
    parser.add_argument(
        "--edge-id", help="this edge's id on the bus (default: $YAP_EDGE_ID, else random)"
    )
    args = parser.parse_args()
    try:
        config = load_config(args.config, os.environ)
        edge_id = validate_id(
            args.edge_id or os.environ.get("YAP_EDGE_ID") or f"edge-{uuid.uuid4().hex[:10]}"
        )
    except (ConfigError, InvalidSessionId) as exc:
        sys.exit(f"edge: {exc}")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_run(config, edge_id))


if __name__ == "__main__":
    main()
