"""Bus outages and edge restarts, with the real services and a real nats-server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from edge.server import EdgeServer
from tests.support.stack import make_config, read_turn, recv_json, run_stack, start_message


async def _turn_after_outage(ws, session_id: str, within: float) -> list[dict]:  # type: ignore[no-untyped-def]
    """Start turns until one completes; failures while the bus comes back are retried."""
    async with asyncio.timeout(within):
        while True:
            await ws.send(start_message(session_id, "back again"))
            frames = await read_turn(ws, within=within)
            if frames[-1].get("usage") is not None and "error_code" not in frames[-1]:
                return frames
            assert frames[-1]["error_code"] in ("bus_unavailable", "no_actor_available")
            await asyncio.sleep(0.1)  # a client's retry backoff, not synchronisation


async def test_nats_restart_mid_turn(nats_server) -> None:
    """A nats-server restart ends the turn in flight with an error, keeps the WebSocket
    open, and new turns work within 5 s of the server's return."""
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 100})
    async with run_stack(config) as stack, stack.client() as ws:
        session_id = uuid.uuid4().hex
        await ws.send(start_message(session_id, "[[long]] go on"))
        while (await recv_json(ws))["type"] != "token":
            pass
        await nats_server.stop()
        while (frame := await recv_json(ws))["type"] == "token":
            pass
        assert frame["type"] == "error"
        assert frame["error_code"] in ("bus_unavailable", "actor_lost")
        assert (await recv_json(ws))["type"] == "done"
        await stack.wait_idle()  # the actors aborted their engine requests

        await nats_server.start()
        back_at = time.monotonic()
        frames = await _turn_after_outage(ws, session_id, within=10)
        assert time.monotonic() - back_at < 5.0
        assert [f["type"] for f in frames][-2:] == ["final", "done"]
        await stack.wait_idle()


async def test_session_survives_edge_restart(nats_server) -> None:
    """Settings stored by one edge come back from the KV bucket on the next edge."""
    config = make_config(nats_server.url)
    log = logging.getLogger("yap.test")
    async with run_stack(config) as stack:
        async with stack.client() as ws:
            await ws.send(
                start_message("persist-me", persona_style="savage", assistant_gender="man")
            )
            first = await read_turn(ws)
        await stack.edge.__aexit__(None, None, None)
        async with EdgeServer(config, log) as edge2:
            url = f"ws://127.0.0.1:{edge2.port}/ws?api_key=test-key"
            async with stack.client(url) as ws:
                await ws.send(
                    json.dumps(
                        {
                            "type": "start",
                            "session_id": "persist-me",
                            "user_utterance": "remember me?",
                        }
                    )
                )
                second = await read_turn(ws)
    assert second[0]["persona_style"] == "savage"
    assert second[0]["assistant_gender"] == "man"
    assert second[0]["seed"] == first[0]["seed"]
