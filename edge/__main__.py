"""``python -m edge [--config PATH]``: run one edge process until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from bus.logs import setup_logging
from bus.loop import loop_factory
from configs import ConfigError, load_config
from configs.schema import Config
from edge.server import EdgeServer


async def _run(config: Config) -> None:
    log = setup_logging(config.log.level, config.log.format, "edge")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EdgeServer(config, log):
        await stop.wait()
        log.info("edge got a stop signal")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m edge", description=__doc__)
    parser.add_argument("--config", help="TOML deployment file (default: the CPU config)")
    args = parser.parse_args()
    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        sys.exit(f"edge: {exc}")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_run(config))


if __name__ == "__main__":
    main()
