"""A fake actor: sends ready heartbeats until SIGTERM; see :mod:`tests.support.fakes`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

import nats

from bus import subjects
from bus.codec import Codec
from bus.events import ActorKind, Heartbeat
from configs.loader import load_config
from configs.schema import BusConfig
from tests.support.fakes import CRASH_CODE, FakeBehaviour

_INTERVAL_S = 0.1


async def run(kind: ActorKind, bus: BusConfig, fake: FakeBehaviour) -> int:
    stop = asyncio.Event()
    if not fake.ignore_sigterm_if_asked():
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    actor_id = os.environ.get("YAP_ACTOR_ID") or f"fake-{kind}-{os.getpid()}"
    heartbeat = Codec().encode(Heartbeat(actor_id=actor_id, kind=kind, interval_s=_INTERVAL_S))
    nc = await nats.connect(servers=list(bus.urls), user=bus.user, password=bus.password)
    if fake.die:  # like an engine that fails to load: connected, never ready
        await nc.close()
        return CRASH_CODE
    try:
        while not stop.is_set():
            if not fake.silent:
                await nc.publish(subjects.heartbeat(kind, actor_id), heartbeat)
            if fake.crash:
                await nc.flush()
                return CRASH_CODE
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_INTERVAL_S):
                    await stop.wait()
    finally:
        await nc.close()
    fake.record("stop")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["tool", "chat"])
    parser.add_argument("--config")
    args = parser.parse_args()
    config = load_config(args.config, os.environ)
    fake = FakeBehaviour(args.kind, dict(os.environ))
    fake.record("start")
    fake.record_env(dict(os.environ), args.config)
    return asyncio.run(run(args.kind, config.bus, fake))


if __name__ == "__main__":
    sys.exit(main())
