"""Fixtures shared by every test tier: a real nats-server per test on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from launcher.nats import NatsServer


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A fresh nats-server with JetStream in ``tmp_path``, stopped after the test.

    Tests may ``restart()``, ``kill()`` and ``start()`` it: the port stays the same.
    """
    async with NatsServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """The client URL of :func:`nats_server`, e.g. ``nats://127.0.0.1:41234``."""
    return nats_server.url


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[Client]:
    """A nats-py connection to :func:`nats_server`, closed after the test."""
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()
