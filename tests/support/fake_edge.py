"""A fake edge: answers any HTTP request with 200 until SIGTERM (see tests.support.fakes)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from configs.loader import load_config
from tests.support.fakes import CRASH_CODE, FakeBehaviour

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


async def run(host: str, port: int, fake: FakeBehaviour) -> int:
    stop = asyncio.Event()
    crashed = asyncio.Event()
    if not fake.ignore_sigterm_if_asked():
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_OK)
        await writer.drain()
        writer.close()
        if fake.crash:
            crashed.set()

    if fake.die:
        return CRASH_CODE
    # Several fake edges share one port, as real ones do.
    async with await asyncio.start_server(answer, host, port, reuse_port=True):
        stopped = asyncio.ensure_future(stop.wait())
        died = asyncio.ensure_future(crashed.wait())
        await asyncio.wait([stopped, died], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        died.cancel()
    if crashed.is_set():
        return CRASH_CODE
    fake.record("stop")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    args = parser.parse_args()
    config = load_config(args.config, os.environ)
    fake = FakeBehaviour("edge", dict(os.environ))
    fake.record("start")
    fake.record_env(dict(os.environ), args.config)
    return asyncio.run(run(config.edge.host, config.edge.port, fake))


if __name__ == "__main__":
    sys.exit(main())
