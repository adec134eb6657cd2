"""Turns through the real edge, bus and actor services, with fake engines."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from bus.history import append_turn
from tests.support.stack import (
    client_warms,
    make_config,
    read_turn,
    recv_json,
    run_stack,
    start_message,
)


def _types(frames: list[dict]) -> list[str]:
    return [f["type"] for f in frames]


def _check_ordering(frames: list[dict], *, toolcall: bool) -> None:
    types = _types(frames)
    assert types[0] == "ack"
    assert types[-2:] == ["final", "done"]
    assert types.count("done") == 1
    if toolcall:
        assert types[1] == "toolcall"
        assert types.count("toolcall") == 1
    else:
        assert "toolcall" not in types


@pytest.mark.parametrize("concurrent", [False, True])
async def test_full_turn_both_models(nats_server, concurrent: bool) -> None:
    """A start yields ack, toolcall, tokens, final and done, in that order."""
    config = make_config(nats_server.url, models={"concurrent_model_call": concurrent})
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message(uuid.uuid4().hex))
        frames = await read_turn(ws)
    _check_ordering(frames, toolcall=True)
    assert frames[1]["status"] == "no" and frames[1]["raw"] == []
    text = "".join(f["text"] for f in frames if f["type"] == "token")
    assert text.endswith("end.")
    assert frames[-2]["normalized_text"] == " ".join(text.split())
    assert frames[-1]["usage"]["completion_tokens"] > 0
    assert stack.running_requests() == 0


async def test_toolcall_yes(nats_server) -> None:
    """An utterance about the screen gets a yes decision with the parsed call."""
    config = make_config(nats_server.url)
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s1", "can you look at my screen"))
        frames = await read_turn(ws)
    assert frames[1] == {
        "type": "toolcall",
        "status": "yes",
        "raw": [{"name": "take_screenshot", "arguments": {}}],
    }
    assert _types(frames)[-2:] == ["final", "done"]


async def test_chat_only_and_tool_only(nats_server) -> None:
    """Chat-only skips the toolcall; tool-only sends it with an empty final."""
    chat_only = make_config(nats_server.url, models={"deploy": "chat"})
    async with run_stack(chat_only) as stack, stack.client() as ws:
        await ws.send(start_message("s1"))
        frames = await read_turn(ws)
    _check_ordering(frames, toolcall=False)
    assert frames[0]["models"]["tool"] is None

    tool_only = make_config(nats_server.url, models={"deploy": "tool"})
    async with run_stack(tool_only) as stack, stack.client() as ws:
        await ws.send(start_message("s1"))
        frames = await read_turn(ws)
    assert _types(frames) == ["ack", "toolcall", "final", "done"]
    assert frames[2]["normalized_text"] == ""


async def test_cancel_stops_engine(nats_server) -> None:
    """A cancel answers done cancelled and leaves no engine request running."""
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 200})
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s1", "[[long]] tell me a story"))
        frames = [await recv_json(ws) for _ in range(3)]  # ack, toolcall, first token
        assert _types(frames) == ["ack", "toolcall", "token"]
        await ws.send(json.dumps({"type": "cancel"}))
        while (frame := await recv_json(ws))["type"] == "token":
            pass
        assert frame == {"type": "done", "cancelled": True}
        chat = stack.engines("chat")[0]
        await stack.wait_idle()
        assert len(chat.aborted) == 1
        # Nothing of the cancelled turn follows its done.
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv_json(ws) == {"type": "pong"}


async def test_barge_in(nats_server) -> None:
    """A new start cancels the running turn; no frame of the old turn follows the new ack."""
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 200})
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s1", "[[long]] first"))
        first_ack = await recv_json(ws)
        while (await recv_json(ws))["type"] != "token":
            pass
        await ws.send(start_message("s1", "second"))
        while (frame := await recv_json(ws))["type"] != "ack":
            assert frame["type"] == "token"
        assert frame["turn_id"] != first_ack["turn_id"]
        frames = await read_turn(ws)
        _check_ordering([frame, *frames], toolcall=True)
        text = "".join(f["text"] for f in frames if f["type"] == "token")
        assert len(text.split()) == 12  # the short reply only, none of the long one
        await stack.wait_idle()
        assert stack.engines("chat")[0].aborted


async def test_no_actor_available(nats_server) -> None:
    """With no chat actor running the client gets an error and a done, fast."""
    config = make_config(nats_server.url, models={"deploy": "chat"})
    async with run_stack(config, chats=0) as stack, stack.client() as ws:
        await ws.send(start_message("s1"))
        frames = await read_turn(ws, within=3)
    assert _types(frames) == ["ack", "error", "done"]
    assert frames[1]["error_code"] == "no_actor_available"


async def test_session_settings_persist(nats_server) -> None:
    """Gender is required once per session, then remembered, with the same seed."""
    config = make_config(nats_server.url)
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(json.dumps({"type": "start", "session_id": "s9", "user_utterance": "hi"}))
        error = await recv_json(ws)
        assert error["type"] == "error" and error["error_code"] == "missing_field"
        await ws.send(start_message("s9", persona_style="nerdy", assistant_gender="m"))
        first = await read_turn(ws)
        await ws.send(json.dumps({"type": "start", "session_id": "s9", "user_utterance": "hi"}))
        second = await read_turn(ws)
    assert first[0]["assistant_gender"] == second[0]["assistant_gender"] == "man"
    assert second[0]["persona_style"] == "nerdy"
    assert first[0]["seed"] == second[0]["seed"]


async def test_set_persona_and_warm(nats_server) -> None:
    """set_persona answers an ack listing what changed; warm answers warmed."""
    config = make_config(nats_server.url)
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s2"))
        await read_turn(ws)
        await ws.send(json.dumps({"type": "set_persona", "persona_style": "savage"}))
        ack = await recv_json(ws)
        assert ack["for"] == "set_persona" and ack["changed"] == {"persona_style": "savage"}
        await ws.send(json.dumps({"type": "warm_persona", "persona_text": "You are Ada."}))
        await ws.send(json.dumps({"type": "warm_history", "history_text": "user: hi"}))
        warmed = [await recv_json(ws), await recv_json(ws)]
        assert sorted(w["segment"] for w in warmed) == ["history", "persona"]
        assert all(w["type"] == "warmed" and w["bytes"] > 0 for w in warmed)
        # The client's two warms; the actor's own next-turn warm comes on top.
        engine = stack.engines("chat")[0]
        assert len(client_warms(engine)) == 2


async def _refused_with(url: str, **headers: str) -> int | None:
    """The HTTP status that refused the handshake, or None if it was let in."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    try:
        async with connect(url, additional_headers=headers) as ws:
            frame = await recv_json(ws)
            assert frame["error_code"] == "authentication_failed"
            return None
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_auth_failures_throttled_but_never_the_right_key(nats_server) -> None:
    """After too many wrong keys from one address its wrong keys get HTTP 429; the right
    key from that same address is still served, on the WebSocket and on /status."""
    from launcher.net import http_status

    config = make_config(nats_server.url, edge={"auth_max_failures": 3})
    async with run_stack(config) as stack:
        bad = f"ws://127.0.0.1:{stack.edge.port}/ws?api_key=wrong"
        assert [await _refused_with(bad) for _ in range(3)] == [None, None, None]
        assert await _refused_with(bad) == 429
        assert await http_status("127.0.0.1", stack.edge.port, "/status?api_key=nope") == 429
        async with stack.client() as ws:
            await ws.send(start_message("still-me"))
            assert (await read_turn(ws))[-1].get("usage") is not None
        status = "/status?api_key=test-key"
        assert await http_status("127.0.0.1", stack.edge.port, status) == 200


async def test_auth_throttle_keys_on_the_client_behind_a_trusted_proxy(nats_server) -> None:
    """Behind a trusted proxy the throttle counts X-Forwarded-For's client, so one bad
    client does not block another behind the same proxy; an untrusted peer's header is
    ignored (anyone can write it)."""
    trusted = make_config(
        nats_server.url, edge={"auth_max_failures": 2, "trusted_proxies": ["127.0.0.0/8"]}
    )
    async with run_stack(trusted) as stack:
        bad = f"ws://127.0.0.1:{stack.edge.port}/ws?api_key=wrong"
        one = {"X-Forwarded-For": "203.0.113.7"}
        two = {"X-Forwarded-For": "198.51.100.2, 203.0.113.8"}  # the proxy appended .8
        assert [await _refused_with(bad, **one) for _ in range(3)] == [None, None, 429]
        assert await _refused_with(bad, **two) is None  # another client: not blocked
        assert await _refused_with(bad, **{"X-Forwarded-For": "203.0.113.7, 127.0.0.1"}) == 429

    untrusted = make_config(nats_server.url, edge={"auth_max_failures": 2})
    async with run_stack(untrusted) as stack:
        bad = f"ws://127.0.0.1:{stack.edge.port}/ws?api_key=wrong"
        assert await _refused_with(bad, **{"X-Forwarded-For": "203.0.113.7"}) is None
        assert await _refused_with(bad, **{"X-Forwarded-For": "203.0.113.8"}) is None
        assert await _refused_with(bad, **{"X-Forwarded-For": "203.0.113.9"}) == 429


async def test_metrics_endpoint(nats_server) -> None:
    """/metrics (with the key) counts turns by outcome and observes time to first token."""
    from launcher.net import http_status

    config = make_config(nats_server.url)
    async with run_stack(config) as stack:
        async with stack.client() as ws:
            await ws.send(start_message("m1"))
            await read_turn(ws)
        port = stack.edge.port
        assert await http_status("127.0.0.1", port, "/metrics") == 401
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics?api_key=test-key HTTP/1.1\r\nHost: x\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
    assert 'yap_edge_turns_total{outcome="completed"} 1.0' in body
    assert "yap_edge_ttft_seconds_count 1.0" in body
    assert "yap_edge_toolcall_seconds_count 1.0" in body
    assert 'yap_edge_actors_alive{kind="chat"} 1.0' in body


async def test_session_affinity_keeps_the_prefix_cache(nats_server) -> None:
    """With two chat actors, a session's warm and all its turns reach the same one,
    and when that actor goes away the session moves on to the other."""
    config = make_config(nats_server.url)
    async with run_stack(config, chats=2) as stack, stack.client() as ws:
        await ws.send(start_message("sticky", "first"))
        await read_turn(ws)
        await ws.send(json.dumps({"type": "warm_history", "history_text": "user: hi"}))
        assert (await recv_json(ws))["type"] == "warmed"
        for n in range(6):
            await ws.send(start_message("sticky", f"turn{n}"))
            await read_turn(ws)
        chats = [a for a in stack.actors if a.kind == "chat"]
        served = [len(a.engine.prompts) for a in chats]  # type: ignore[attr-defined]
        warmed = [len(client_warms(a.engine)) for a in chats]  # type: ignore[arg-type]
        home = served.index(max(served))
        assert served[home] == 7 and served[1 - home] == 0
        assert warmed[home] == 1

        await chats[home].__aexit__(None, None, None)  # the home actor leaves
        await ws.send(start_message("sticky", "moved"))
        frames = await read_turn(ws)
        assert frames[-1]["type"] == "done" and "usage" in frames[-1]
        assert len(chats[1 - home].engine.prompts) == 1  # type: ignore[attr-defined]


async def test_actor_metrics_endpoint(nats_server) -> None:
    """An actor's own /metrics counts its turns and observes its first output."""
    from bus.metrics_http import MetricsServer

    config = make_config(nats_server.url)
    async with run_stack(config) as stack:
        async with stack.client() as ws:
            await ws.send(start_message("am1"))
            await read_turn(ws)
        chat = next(a for a in stack.actors if a.kind == "chat")
        async with MetricsServer(chat.metrics.registry, "127.0.0.1", 0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            body = (await reader.read()).decode()
            writer.close()
    assert body.startswith("HTTP/1.1 200 OK")
    assert 'yap_actor_turns_total{kind="chat",outcome="completed"} 1.0' in body
    assert 'yap_actor_first_output_seconds_count{kind="chat"} 1.0' in body
    for stage in ("prompt", "intake", "wait", "prefill", "engine", "first_event"):
        assert f'yap_actor_stage_seconds_count{{kind="chat",stage="{stage}"}} 1.0' in body
    assert 'yap_actor_token_events_total{kind="chat"} 12.0' in body
    assert "yap_actor_engine_running 0.0" in body


async def test_next_turn_starts_with_the_prewarmed_prefix(nats_server) -> None:
    """After a reply the chat actor warms the next turn's prefix; a client that builds
    its history with bus.history sends a next turn whose prompt starts with it."""
    config = make_config(nats_server.url)
    history = "User: hello\nAssistant: hi there."
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("warm1", "tell me more", history_text=history))
        frames = await read_turn(ws)
        reply = next(f for f in frames if f["type"] == "final")["normalized_text"]
        engine = stack.engines("chat")[0]
        async with asyncio.timeout(5):
            await engine.warm_seen.wait()
        history = append_turn(history, "tell me more", reply)
        await ws.send(start_message("warm1", "and then?", history_text=history))
        await read_turn(ws)
    warm = engine.warmed_ids[0]  # the one warmed after the first reply
    turn = engine.prompt_ids[-1]
    assert turn[: len(warm)] == warm
    assert len(warm) > len(turn) - 40  # all but the utterance and its markup


async def test_done_events_carry_each_legs_stamps_in_order(nats_server, nats_client) -> None:
    """Each leg's done says where its wait for the first event went: the stamps run
    from the start reaching the actor to the first event, in order, and between the
    client's send and the frame it got."""
    from bus import subjects
    from bus.codec import Codec
    from bus.events import Done

    codec = Codec()
    sub = await nats_client.subscribe(subjects.all_out("done"))
    await nats_client.flush()
    config = make_config(nats_server.url)
    async with run_stack(config) as stack, stack.client() as ws:
        sent = time.monotonic()
        await ws.send(start_message("st1"))
        frames = await read_turn(ws)
        received = time.monotonic()
    assert _types(frames)[-1] == "done"
    dones = [codec.decode_outbound((await sub.next_msg(timeout=5)).data) for _ in range(2)]
    by_kind = {d.kind: d for d in dones if isinstance(d, Done)}
    assert set(by_kind) == {"tool", "chat"}
    for done in by_kind.values():
        timing = done.timing
        assert timing is not None
        stamps = [
            timing.received,
            timing.submitted,
            timing.queued,
            timing.first_token,
            timing.first_output,
            timing.first_event,
        ]
        assert sent < stamps[0] and stamps[-1] < received
        assert stamps == sorted(stamps)
        assert set(timing.stages()) >= {"prompt", "intake", "prefill", "engine", "first_event"}
