"""Each deploy mode and call mode, as separate real systems."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from launcher.nats import NatsServer
from tests.support.stack import read_turn, start_message
from tests.support.system import run_system


@pytest.mark.parametrize(
    ("deploy", "concurrent", "expected"),
    [
        ("both", True, ["ack", "toolcall", "token", "final", "done"]),
        ("chat", False, ["ack", "token", "final", "done"]),
        ("tool", False, ["ack", "toolcall", "final", "done"]),
    ],
)
async def test_mode(
    tmp_path: Path, model_cache: Path, deploy: str, concurrent: bool, expected: list[str]
) -> None:
    """The frame sequence of a turn matches the deployment: toolcall only with a tool."""
    async with (
        NatsServer(tmp_path / "nats") as nats_server,
        run_system(
            tmp_path,
            nats_server.url,
            model_cache,
            deploy=deploy,
            concurrent=concurrent,
        ) as system,
        connect(system.url) as ws,
    ):
        await ws.send(start_message(uuid.uuid4().hex, "what time is it"))
        frames = await read_turn(ws, within=60)
    types = [f["type"] for f in frames]
    collapsed = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
    assert collapsed == expected
    if deploy == "tool":
        assert frames[-2]["normalized_text"] == ""
