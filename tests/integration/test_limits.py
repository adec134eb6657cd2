"""Every edge limit, set small in the config, answers with its own code and leaves the
system serving; malformed bus payloads are dropped without killing any consumer."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bus import subjects
from bus.codec import Codec
from bus.events import (
    Cancel,
    ChatStart,
    Done,
    Heartbeat,
    Persona,
    Rejected,
    Token,
    ToolStart,
    request_id,
)
from edge import ratelimit
from tests.support.stack import make_config, read_turn, recv_json, run_stack, start_message

PING = json.dumps({"type": "ping"})
CANCEL = json.dumps({"type": "cancel"})
END = json.dumps({"type": "end"})


def _assert_error(frame: dict[str, Any], code: str) -> None:
    assert frame == {"type": "error", "error_code": code, "message": frame.get("message")}
    assert isinstance(frame["message"], str) and frame["message"]


async def _closed_with(ws: ClientConnection, within: float = 5.0) -> int:
    """Read until the server closes the connection; its close code."""
    async with asyncio.timeout(within):
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def _completed_turn(ws: ClientConnection, session_id: str, tag: str, **extra: Any) -> None:
    await ws.send(start_message(session_id, f"{tag} and then some", **extra))
    frames = await read_turn(ws)
    assert [f["type"] for f in frames][-2:] == ["final", "done"], frames
    assert "usage" in frames[-1]
    words = "".join(f["text"] for f in frames if f["type"] == "token").split()
    assert words[-1] == "end." and all(w.startswith(tag) for w in words[:-1])


async def _until_first_token(ws: ClientConnection) -> list[dict[str, Any]]:
    """A turn's frames from its ack up to and including its first token."""
    frames = [await recv_json(ws)]
    assert frames[0]["type"] == "ack"
    while frames[-1]["type"] != "token":
        frames.append(await recv_json(ws))
    return frames


async def _eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for a condition that no event announces (server-side cleanup)."""
    async with asyncio.timeout(within):
        # Nothing signals the edge's or the loop's cleanup, so poll, bounded.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# --- frame size, rate, idleness --------------------------------------------------------


async def test_frame_over_max_frame_bytes_closes_1009(nats_server) -> None:
    """A frame of max_frame_bytes is answered; one byte more closes the connection 1009."""
    config = make_config(nats_server.url, edge={"max_frame_bytes": 2048})
    async with run_stack(config) as stack:
        async with stack.client() as ws:
            await ws.send("x" * 2048)
            _assert_error(await recv_json(ws), "invalid_json")
            await ws.send("x" * 2049)
            assert await _closed_with(ws) == 1009
        async with stack.client() as ws:  # the edge goes on serving
            await ws.send(PING)
            assert await recv_json(ws) == {"type": "pong"}


class _Clock:
    """``time`` for the rate limiter, with a hand that can be moved forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


async def test_messages_per_minute(nats_server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past messages_per_minute every message, cancel and ping included, is rate_limited,
    the connection stays open, and the budget refills with time."""
    clock = _Clock()
    monkeypatch.setattr(ratelimit, "time", clock)
    config = make_config(nats_server.url, edge={"messages_per_minute": 5})
    async with run_stack(config) as stack, stack.client() as ws:
        for _ in range(5):
            await ws.send(PING)
            assert await recv_json(ws) == {"type": "pong"}
        for message in (PING, CANCEL, start_message("s1"), "not json"):
            await ws.send(message)
            _assert_error(await recv_json(ws), "rate_limited")
        clock.offset += 12.0  # 5 a minute: one more message every 12 s
        await ws.send(PING)
        assert await recv_json(ws) == {"type": "pong"}
        await ws.send(PING)
        _assert_error(await recv_json(ws), "rate_limited")


async def test_cancels_per_minute(nats_server) -> None:
    """Past cancels_per_minute a cancel is rate_limited while other messages go through."""
    config = make_config(nats_server.url, edge={"cancels_per_minute": 2})
    async with run_stack(config) as stack, stack.client() as ws:
        for _ in range(2):
            await ws.send(CANCEL)
            assert await recv_json(ws) == {"type": "done", "cancelled": True}
        await ws.send(CANCEL)
        _assert_error(await recv_json(ws), "rate_limited")
        await ws.send(PING)
        assert await recv_json(ws) == {"type": "pong"}
        await _completed_turn(ws, "s1", "after")


async def test_idle_connection_closes_4000(nats_server) -> None:
    """A connection that sends nothing for idle_timeout_s is closed with code 4000."""
    config = make_config(nats_server.url, edge={"idle_timeout_s": 0.5})
    async with run_stack(config) as stack, stack.client() as ws:
        opened = time.monotonic()
        assert await _closed_with(ws, within=5.0) == 4000
        assert time.monotonic() - opened >= 0.45


async def test_running_turn_is_not_idleness(nats_server) -> None:
    """A turn longer than idle_timeout_s completes; the idle close comes only after it."""
    config = make_config(
        nats_server.url, edge={"idle_timeout_s": 0.5}, chat={"bench_tokens_per_s": 100}
    )
    async with run_stack(config) as stack, stack.client() as ws:
        started = time.monotonic()
        await ws.send(start_message("s1", "long [[long]] story"))
        frames = await read_turn(ws)
        # max_out (200) words at 100/s: four times the idle limit, in silence.
        assert time.monotonic() - started > 1.5
        assert [f["type"] for f in frames][-2:] == ["final", "done"]
        assert "usage" in frames[-1] and "cancelled" not in frames[-1]
        words = "".join(f["text"] for f in frames if f["type"] == "token").split()
        assert len(words) == config.chat.max_out
        assert await _closed_with(ws) == 4000


async def test_ping_pong(nats_server) -> None:
    """A ping is answered with a pong, also with unknown fields, and changes nothing."""
    config = make_config(nats_server.url)
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(PING)
        assert await recv_json(ws) == {"type": "pong"}
        await ws.send(json.dumps({"type": "ping", "nonce": 7}))
        assert await recv_json(ws) == {"type": "pong"}
        await _completed_turn(ws, "s1", "pinged")


async def test_end_without_turn(nats_server) -> None:
    """An end with no turn running answers a plain done, then closes 1000."""
    config = make_config(nats_server.url)
    async with run_stack(config) as stack, stack.client() as ws:
        await _completed_turn(ws, "s1", "first")
        await ws.send(END)
        assert await recv_json(ws) == {"type": "done", "usage": {}}
        assert await _closed_with(ws) == 1000
        await _eventually(lambda: not stack.edge.connections)


async def test_end_with_running_turn(nats_server) -> None:
    """An end mid-turn answers done cancelled, closes 1000 and aborts the engine request."""
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 200})
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s1", "long [[long]] story"))
        ack = (await _until_first_token(ws))[0]
        await ws.send(END)
        while (frame := await recv_json(ws))["type"] == "token":
            pass
        assert frame == {"type": "done", "cancelled": True}
        assert await _closed_with(ws) == 1000
        await stack.wait_idle()
        assert stack.running_requests() == 0
        assert stack.engines("chat")[0].aborted == [request_id("chat", "s1", ack["turn_id"])]


async def test_disconnect_mid_turn_aborts_engine(nats_server) -> None:
    """A client that goes away mid-turn gets its engine request aborted."""
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 200})
    async with run_stack(config) as stack:
        async with stack.client() as ws:
            await ws.send(start_message("s1", "long [[long]] story"))
            ack = (await _until_first_token(ws))[0]
        await stack.wait_idle()
        assert stack.running_requests() == 0
        assert stack.engines("chat")[0].aborted == [request_id("chat", "s1", ack["turn_id"])]
        await _eventually(lambda: not stack.edge.connections)


async def test_max_concurrent_connections(nats_server) -> None:
    """Past max_concurrent_connections a client gets server_at_capacity and close 1013."""
    config = make_config(nats_server.url, edge={"max_concurrent_connections": 1})
    async with run_stack(config) as stack, stack.client() as first:
        await first.send(PING)
        assert await recv_json(first) == {"type": "pong"}
        async with stack.client() as second:
            frame = await recv_json(second)
            assert set(frame) == {"type", "error_code", "message", "capacity"}
            assert frame["error_code"] == "server_at_capacity"
            assert frame["capacity"] == {"active": 1, "max": 1, "available": 0, "at_capacity": True}
            assert await _closed_with(second) == 1013
        await _completed_turn(first, "s1", "still")


# --- lengths -------------------------------------------------------------------------

LIMITS = {"max_utterance_chars": 50, "max_history_chars": 80, "max_persona_chars": 60}


def _field_cases(field: str) -> tuple[dict[str, Any], list[str]]:
    """A start exactly at the limit (extra fields), and messages one character over it."""
    over = {
        "user_utterance": "é" * (LIMITS["max_utterance_chars"] + 1),
        "history_text": "é" * (LIMITS["max_history_chars"] + 1),
        "persona_text": "é" * (LIMITS["max_persona_chars"] + 1),
    }[field]
    if field == "user_utterance":
        return {}, [start_message("s1", over)]
    if field == "history_text":
        at_limit = {"history_text": "é" * LIMITS["max_history_chars"]}
        return at_limit, [
            start_message("s1", "hi", history_text=over),
            json.dumps({"type": "warm_history", "history_text": over}),
        ]
    at_limit = {"persona_text": "é" * LIMITS["max_persona_chars"]}
    return at_limit, [
        start_message("s1", "hi", persona_text=over),
        json.dumps({"type": "warm_persona", "persona_text": over}),
        json.dumps({"type": "set_persona", "session_id": "s1", "persona_text": over}),
    ]


@pytest.mark.parametrize("field", ["user_utterance", "history_text", "persona_text"])
async def test_field_too_long(nats_server, field: str) -> None:
    """A field one character over its limit is field_too_long in every message that
    carries it; at the limit (counted in characters, not bytes) the turn runs."""
    config = make_config(nats_server.url, edge=LIMITS)
    at_limit, too_long = _field_cases(field)
    async with run_stack(config) as stack, stack.client() as ws:
        for message in too_long:
            await ws.send(message)
            _assert_error(await recv_json(ws), "field_too_long")
        tag = "t1"
        if field == "user_utterance":  # the tag, a space, then up to the limit
            tag = "t1 " + "é" * (LIMITS["max_utterance_chars"] - 3)
            await ws.send(start_message("s1", tag))
            frames = await read_turn(ws)
            assert [f["type"] for f in frames][-2:] == ["final", "done"]
            words = "".join(f["text"] for f in frames if f["type"] == "token").split()
            assert words[-1] == "end." and all(w.startswith("t1") for w in words[:-1]), words
        else:
            await _completed_turn(ws, "s1", tag, **at_limit)
        await stack.wait_idle()


# --- origins -------------------------------------------------------------------------


async def test_allowed_origins(nats_server) -> None:
    """With allowed_origins set, a foreign Origin is refused with HTTP 403; a listed one
    and a client that sends no Origin at all (not a browser) are served."""
    config = make_config(nats_server.url, edge={"allowed_origins": ["https://app.example"]})
    async with run_stack(config) as stack:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(stack.url, origin="https://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        async with connect(stack.url, origin="https://app.example") as ws:
            await _completed_turn(ws, "s1", "allowed")
        async with connect(stack.url) as ws:
            await _completed_turn(ws, "s2", "server")


# --- malformed bus payloads ----------------------------------------------------------

GARBAGE: list[bytes] = [
    b"",
    b"\xc1",  # never valid msgpack
    b"not msgpack at all",
    b"\x93\x01\x02",  # an array cut short
    msgspec.msgpack.encode({"type": "tool_start"}),
    msgspec.msgpack.encode(["tool_start"]),
    msgspec.msgpack.encode(["tool_start", 1, 2, 3]),
    msgspec.msgpack.encode(["no_such_event", "s1", "t1"]),
    msgspec.msgpack.encode(["token", "s1", "t1", "one", 2]),
    b"\x91" * 10_000 + b"\xc0",  # nested 10,000 deep
    bytes(range(256)),
]


def _warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and needle in r.getMessage()
    ]


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors


@pytest.mark.parametrize("kind", ["tool", "chat"])
async def test_garbage_on_start_subject(
    nats_server, nats_client: NatsClient, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """Garbage start requests get a bad_request rejection and are logged; events of the
    wrong kind are dropped; the same session's next turn works."""
    caplog.set_level(logging.WARNING)
    subject = subjects.tool_start("s1") if kind == "tool" else subjects.chat_start("s1")
    codec = Codec()
    async with run_stack(make_config(nats_server.url)) as stack, stack.client() as ws:
        for payload in GARBAGE:
            reply = codec.decode_reply((await nats_client.request(subject, payload, 2.0)).data)
            assert isinstance(reply, Rejected) and reply.code == "bad_request", reply
            await nats_client.publish(subject, payload)  # and without a reply subject
        wrong_kind = [
            codec.encode(Cancel("s1", "t-wrong")),
            codec.encode(
                ChatStart("s1", "t-wrong", user_utterance="x", persona=Persona())
                if kind == "tool"
                else ToolStart("s1", "t-wrong", user_utterance="x")
            ),
        ]
        for payload in wrong_kind:
            await nats_client.publish(subject, payload)
        await nats_client.flush()
        await _completed_turn(ws, "s1", "after")
        await stack.wait_idle()
    assert len(_warnings(caplog, f"dropped malformed start on {subject}")) == 2 * len(GARBAGE)
    _no_errors_logged(caplog)


async def test_garbage_on_cancel_subject(
    nats_server, nats_client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage cancels are logged and dropped, a running turn goes on, and the cancel
    consumer still stops the next turn."""
    caplog.set_level(logging.WARNING)
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 400})
    subject = subjects.cancel("s1")
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s1", "first [[long]] story"))
        await _until_first_token(ws)
        for payload in GARBAGE:
            await nats_client.publish(subject, payload)
        await nats_client.flush()
        frames = await read_turn(ws)
        assert frames[-1]["type"] == "done" and "usage" in frames[-1]
        words = "".join(f["text"] for f in frames if f["type"] == "token").split()
        assert words and all(w.startswith("first") for w in words)  # max_out cuts it short

        await ws.send(start_message("s1", "second [[long]] story"))
        ack = (await _until_first_token(ws))[0]
        await ws.send(CANCEL)
        while (frame := await recv_json(ws))["type"] == "token":
            pass
        assert frame == {"type": "done", "cancelled": True}
        await stack.wait_idle()
        assert stack.engines("chat")[0].aborted == [request_id("chat", "s1", ack["turn_id"])]
    # Every actor subscribes to cancels: each logs each piece of garbage.
    assert len(_warnings(caplog, f"dropped malformed cancel on {subject}")) == 2 * len(GARBAGE)
    _no_errors_logged(caplog)


async def test_garbage_on_warm_subject(
    nats_server, nats_client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage warms are logged and dropped and the warm consumer still answers."""
    caplog.set_level(logging.WARNING)
    subject = subjects.chat_warm("s1")
    async with run_stack(make_config(nats_server.url)) as stack, stack.client() as ws:
        for payload in GARBAGE:
            await nats_client.publish(subject, payload)
        await nats_client.flush()
        await _completed_turn(ws, "s1", "first")
        await ws.send(json.dumps({"type": "warm_persona", "persona_text": "You are Ada."}))
        warmed = await recv_json(ws)
        assert warmed["type"] == "warmed" and warmed["segment"] == "persona"
        assert stack.engines("chat")[0].warmed
    assert len(_warnings(caplog, f"dropped malformed warm on {subject}")) == len(GARBAGE)
    _no_errors_logged(caplog)


async def test_garbage_on_out_subject_mid_turn(
    nats_server, nats_client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage and other turns' events on a session's out subjects never reach the
    client, and the running turn completes."""
    caplog.set_level(logging.WARNING)
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 400})
    codec = Codec()
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s1", "mine [[long]] story"))
        first = await _until_first_token(ws)  # the edge routes s1's events to this client
        edge_id = stack.edge.edge_id
        for kind in ("token", "toolcall", "done", "error"):
            for payload in GARBAGE:
                await nats_client.publish(subjects.edge_out(edge_id, "s1", "chat-1", kind), payload)
        stale = [
            Token("s1", uuid.uuid4().hex, 1, "INTRUDER "),
            Done("s1", uuid.uuid4().hex, 2, "chat", "stop"),
        ]
        for event in stale:
            subject = subjects.edge_out(edge_id, "s1", "chat-1", "token")
            await nats_client.publish(subject, codec.encode(event))
        await nats_client.flush()
        frames = first + await read_turn(ws)
        assert [f["type"] for f in frames][-2:] == ["final", "done"]
        assert "usage" in frames[-1]
        words = "".join(f["text"] for f in frames if f["type"] == "token").split()
        assert len(words) == config.chat.max_out  # the long reply, cut at max_out
        assert all(w.startswith("mine") for w in words), words
        await stack.wait_idle()
    # Each piece of garbage is logged once; the stale events are dropped silently.
    prefix = f"dropped malformed bus message on yap.edge.{edge_id}.session.s1.out.chat-1."
    assert len(_warnings(caplog, prefix)) == 4 * len(GARBAGE)
    _no_errors_logged(caplog)


async def test_garbage_heartbeat(
    nats_server, nats_client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage heartbeats are logged and dropped; the edge stays healthy and serves."""
    caplog.set_level(logging.WARNING)
    subject = subjects.heartbeat("tool", "x")
    async with run_stack(make_config(nats_server.url)) as stack, stack.client() as ws:
        for payload in GARBAGE:
            await nats_client.publish(subject, payload)
        await nats_client.flush()
        await _completed_turn(ws, "s1", "beat")
        assert stack.edge.healthy()
        assert {s.heartbeat.actor_id for s in stack.edge.registry.snapshot()} == {
            "tool-0",
            "chat-1",
        }
    assert len(_warnings(caplog, "dropped malformed heartbeat")) == len(GARBAGE)
    _no_errors_logged(caplog)


async def test_deeply_nested_out_event_is_dropped_as_malformed(
    nats_server, nats_client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An out event nested 3,000 deep is dropped as malformed and the turn completes."""
    caplog.set_level(logging.WARNING)
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 400})
    # ToolCall as msgpack: [tag, session, turn, seq, status, raw, [[name, arguments]]],
    # with arguments a map {"a": {"a": ...}} 3,000 deep.
    encode = msgspec.msgpack.encode
    fields = ["toolcall", "s1", uuid.uuid4().hex, 1, "yes", "[]"]
    payload = b"\x97" + b"".join(encode(f) for f in fields) + b"\x91\x92"
    payload += encode("take_screenshot") + b"\x81\xa1a" * 3000 + b"\xc0"
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s1", "mine [[long]] story"))
        await _until_first_token(ws)
        subject = subjects.edge_out(stack.edge.edge_id, "s1", "tool-0", "toolcall")
        await nats_client.publish(subject, payload)
        await nats_client.flush()
        frames = await read_turn(ws)
        assert "usage" in frames[-1]
        await stack.wait_idle()
    assert _warnings(caplog, f"dropped malformed bus message on {subject}")
    assert not _warnings(caplog, "bus error")


# --- actor capacity --------------------------------------------------------------------


async def test_cancel_right_behind_its_start_frees_the_actor(
    nats_server, nats_client: NatsClient
) -> None:
    """A cancel that reaches an actor right behind its start frees the turn's place, so
    the actor keeps accepting turns past max_running such races."""
    config = make_config(nats_server.url, actor={"max_running": 4})
    codec = Codec()
    async with run_stack(config) as stack:
        tool = next(a for a in stack.actors if a.kind == "tool")
        for _ in range(12):
            turn_id = uuid.uuid4().hex
            inbox = nats_client.new_inbox()
            replies = await nats_client.subscribe(inbox, max_msgs=1)
            start = ToolStart("s1", turn_id, user_utterance="hi", edge_id="edge-test")
            # Both go out in one write, so the actor reads them in one go.
            await nats_client.publish(subjects.tool_start("s1"), codec.encode(start), reply=inbox)
            await nats_client.publish(subjects.cancel("s1"), codec.encode(Cancel("s1", turn_id)))
            await nats_client.flush()
            reply = codec.decode_reply((await replies.next_msg(timeout=2.0)).data)
            assert not isinstance(reply, Rejected), reply
        await stack.wait_idle()
        await _eventually(lambda: tool.running == 0, within=2.0)
        async with stack.client() as ws:
            await _completed_turn(ws, "s1", "after")


# --- leg faults ------------------------------------------------------------------------


async def test_seq_jump_from_the_leg_actor_fails_the_turn_at_once(
    nats_server, nats_client: NatsClient
) -> None:
    """A token of the running turn, from the actor that owns the leg, whose seq jumps
    ahead ends the turn with actor_error and a done at once (not at the 30 s event
    timeout), cancels the leg, and the real stream that follows is not shown."""
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 200})
    codec = Codec()
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s1", "mine [[long]] story"))
        ack = (await _until_first_token(ws))[0]
        subject = subjects.edge_out(stack.edge.edge_id, "s1", "chat-1", "token")
        jump = Token("s1", ack["turn_id"], 10_000, "JUMPED ")
        await nats_client.publish(subject, codec.encode(jump))
        await nats_client.flush()
        frames = await read_turn(ws, within=3.0)
        assert [f["type"] for f in frames][-2:] == ["error", "done"]
        assert frames[-2]["error_code"] == frames[-1]["error_code"] == "actor_error"
        assert not any("JUMPED" in f.get("text", "") for f in frames)
        await stack.wait_idle()  # the leg was cancelled: its engine request is gone
        assert stack.engines("chat")[0].aborted == [request_id("chat", "s1", ack["turn_id"])]
        await _completed_turn(ws, "s1", "after")


async def test_actor_restart_ends_its_legs_at_once(nats_server, nats_client: NatsClient) -> None:
    """A heartbeat from a new instance of the actor that owns a running leg ends the turn
    with actor_lost (its old instance is gone), without waiting for heartbeats to stop."""
    config = make_config(
        nats_server.url,
        chat={"bench_tokens_per_s": 200},
        # Silence alone would take a minute here: only the restart can end the turn.
        edge={"actor_lost_after_s": 60.0},
    )
    codec = Codec()
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s1", "mine [[long]] story"))
        await _until_first_token(ws)
        reborn = Heartbeat(actor_id="chat-1", kind="chat", interval_s=0.1, instance="new-one")
        await nats_client.publish(subjects.heartbeat("chat", "chat-1"), codec.encode(reborn))
        await nats_client.flush()
        frames = await read_turn(ws, within=3.0)
        assert [f["type"] for f in frames][-2:] == ["error", "done"]
        assert frames[-1]["error_code"] == "actor_lost"
        assert "restarted" in frames[-2]["message"]
        await stack.wait_idle()


async def test_stream_flush_ms_merges_deltas_into_fewer_frames(nats_server) -> None:
    """With STREAM_FLUSH_MS a token frame waits for more deltas: fewer frames than
    deltas, the same text, and the frames still in protocol order."""
    config = make_config(
        nats_server.url, edge={"stream_flush_ms": 40}, chat={"bench_tokens_per_s": 400}
    )
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("s1", "mine [[long]] story"))
        frames = await read_turn(ws)
        await stack.wait_idle()
    types = [f["type"] for f in frames]
    assert types[:2] == ["ack", "toolcall"] and types[-2:] == ["final", "done"]
    tokens = [f["text"] for f in frames if f["type"] == "token"]
    words = "".join(tokens).split()
    assert len(words) == config.chat.max_out and all(w.startswith("mine") for w in words)
    # 200 deltas at 400/s over 0.5 s, frames at most every 40 ms: far fewer frames.
    assert len(tokens) < config.chat.max_out / 4
    assert frames[-2]["normalized_text"] == " ".join(words)
