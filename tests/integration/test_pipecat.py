"""The Pipecat service in real Pipecat pipelines against the real edge and actors
(fake engines) on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (
    ErrorFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    LLMUpdateSettingsFrame,
)
from pipecat.services.llm_service import FunctionCallParams
from pipecat.tests.utils import run_test

from actors.prompts.persona import STYLE_TEXTS
from bus import subjects
from bus.codec import Codec
from bus.events import Cancel
from edge.server import EdgeServer
from integrations.pipecat import (
    ReconnectPolicy,
    YapErrorFrame,
    YapLLMService,
    YapLLMSettings,
    tool_call_id,
)
from launcher.net import free_port
from tests.support.pipecat import (
    LLMUsageMetricsData,
    ProcessingMetricsData,
    TTFBMetricsData,
    context_frame,
    metrics,
    pipeline_params,
    replies,
    run_pipeline,
)
from tests.support.proxy import run_proxy
from tests.support.stack import API_KEY, Stack, client_warms, make_config, run_stack

# The fake chat engine's reply: the utterance's first word, numbered, then "end.".
REPLY_WORDS = 12


def reply_of(first_word: str) -> str:
    return "".join(f"{first_word}{i} " for i in range(REPLY_WORDS - 1)) + "end."


def service(url: str, **overrides: Any) -> YapLLMService:
    options: dict[str, Any] = {
        "url": url,
        "api_key": API_KEY,
        "session_id": uuid.uuid4().hex,
        "assistant_gender": "woman",
        "persona_style": "wholesome",
        # Quick retries keep the fault tests short; the budget still covers a restart.
        "reconnect": ReconnectPolicy(first_delay_s=0.05, max_delay_s=0.2, budget_s=10.0),
        **overrides,
    }
    return YapLLMService(**options)


def ws_url(stack: Stack) -> str:
    return f"ws://127.0.0.1:{stack.edge.port}/ws"


def errors(frames: list[Any]) -> list[YapErrorFrame]:
    found = [f for f in frames if isinstance(f, ErrorFrame)]
    assert all(isinstance(f, YapErrorFrame) for f in found), found
    return found  # type: ignore[return-value]


@dataclass
class BusWatch:
    """Messages seen on one subject, with a way to wait for a count of them."""

    seen: list[bytes] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, count: int, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while len(self.seen) < count:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def watch_subject(nats_client: Any, subject: str) -> AsyncIterator[BusWatch]:
    """What is published on ``subject`` while the block runs."""
    watch = BusWatch()

    async def on_message(msg: Any) -> None:
        watch.seen.append(msg.data)
        watch.changed.set()

    sub = await nats_client.subscribe(subject, cb=on_message)
    try:
        yield watch
    finally:
        await sub.unsubscribe()


def tool_starts_of(nats_client: Any, session_id: str) -> Any:
    """The edge's tool starts for ``session_id``: one per start it took."""
    return watch_subject(nats_client, subjects.tool_start(session_id))


def cancel_reasons(watch: BusWatch) -> list[str]:
    codec = Codec()
    events = [codec.decode_inbound(data) for data in watch.seen]
    return [e.reason for e in events if isinstance(e, Cancel)]


async def test_turn_streams_start_text_end_with_metrics(nats_server) -> None:
    """A context frame gives Start, the reply's text, End, with TTFB, processing time
    and token usage; a no decision runs no function."""
    calls: list[FunctionCallParams] = []
    # Paced, so the reply's deltas cannot all arrive in one read and leave as one frame.
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 200})
    async with run_stack(config) as stack:
        llm = service(ws_url(stack))

        async def take_screenshot(params: FunctionCallParams) -> None:
            calls.append(params)

        llm.register_function("take_screenshot", take_screenshot)
        down, up = await run_test(
            llm,
            frames_to_send=[context_frame(("system", "ignored"), ("user", "hello there"))],
            pipeline_params=pipeline_params(),
            start_timeout=10.0,
        )
    assert replies(down) == [reply_of("hello")]
    assert sum(isinstance(f, LLMTextFrame) for f in down) > 1  # streamed, not one blob
    (ttfb,) = metrics(down, TTFBMetricsData)
    assert ttfb.value > 0
    (processing,) = metrics(down, ProcessingMetricsData)
    assert processing.value >= ttfb.value
    (usage,) = metrics(down, LLMUsageMetricsData)
    assert usage.value.completion_tokens == REPLY_WORDS
    assert usage.value.prompt_tokens > 0
    assert usage.value.total_tokens == usage.value.prompt_tokens + REPLY_WORDS
    assert errors(list(up)) == []
    assert calls == []
    assert llm.last_turn_id is not None


async def test_history_and_persona_reach_the_chat_prompt(nats_server) -> None:
    """Earlier turns go out as canonical history lines, the trailing user messages as
    the utterance, and the constructor's persona shapes the prompt."""
    async with run_stack(make_config(nats_server.url)) as stack:
        llm = service(ws_url(stack), persona_style="nerdy", warm_persona=False)
        down, _ = await run_test(
            llm,
            frames_to_send=[
                context_frame(
                    ("user", "first   question"),
                    ("assistant", "first answer"),
                    ("tool", "a tool result the edge never sees"),
                    ("user", "second"),
                    ("user", "part"),
                )
            ],
            pipeline_params=pipeline_params(),
            start_timeout=10.0,
        )
        (prompt,) = stack.engines("chat")[0].prompts
    assert replies(down) == [reply_of("second")]
    assert "User: first question\nAssistant: first answer" in prompt
    assert "second part" in prompt and "tool result" not in prompt
    assert STYLE_TEXTS["nerdy"] in prompt


async def test_tool_yes_runs_the_registered_function(nats_server) -> None:
    """A yes decision runs the registered take_screenshot with a call id derived from
    the turn id; the handler settles with run_llm=False and the reply still streams."""
    calls: list[FunctionCallParams] = []
    # Paced, so the reply's deltas cannot all arrive in one read and leave as one frame.
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 200})
    async with run_stack(config) as stack:
        llm = service(ws_url(stack))

        async def take_screenshot(params: FunctionCallParams) -> None:
            calls.append(params)
            await params.result_callback(
                {"image": "none in tests"},
                properties=FunctionCallResultProperties(run_llm=False),
            )

        llm.register_function("take_screenshot", take_screenshot)
        down, _ = await run_test(
            llm,
            frames_to_send=[context_frame(("user", "can you look at my screen"))],
            pipeline_params=pipeline_params(),
            start_timeout=10.0,
        )
    assert llm.last_turn_id
    (call,) = calls
    assert call.function_name == "take_screenshot"
    assert call.tool_call_id == tool_call_id(llm.last_turn_id)
    (progress,) = [f for f in down if isinstance(f, FunctionCallInProgressFrame)]
    (result,) = [f for f in down if isinstance(f, FunctionCallResultFrame)]
    assert progress.tool_call_id == result.tool_call_id == call.tool_call_id
    assert result.properties is not None and result.properties.run_llm is False
    assert replies(down) == [reply_of("can")]


async def test_interruption_cancels_the_turn_on_the_edge(nats_server, nats_client) -> None:
    """An InterruptionFrame mid-stream sends cancel (not a barge-in): the engine
    request is aborted, nothing runs, and no text of the old turn comes after."""
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 200})
    async with run_stack(config) as stack:
        llm = service(ws_url(stack))
        async with (
            watch_subject(nats_client, subjects.cancel(llm.session_id)) as cancels,
            run_pipeline(llm) as run,
        ):
            await run.send(context_frame(("user", "[[long]] tell me everything")))
            await run.wait_for(lambda f: isinstance(f, LLMTextFrame))
            await run.send(InterruptionFrame())
            interrupted = await run.wait_for(lambda f: isinstance(f, InterruptionFrame))
            await stack.wait_idle()
            chat = stack.engines("chat")[0]
            assert len(chat.aborted) == 1
            assert stack.running_requests() == 0
            await cancels.wait(1)

            await run.send(context_frame(("user", "again please")))
            await run.wait_responses(2)
        after = run.down[interrupted:]
        # One cancel, with the reason a cancel message gives (a barge-in start would
        # say "barge_in"); the next turn found nothing to barge in on.
        assert cancel_reasons(cancels) == ["cancel"]
    texts = replies(run.down)
    assert texts[0].startswith("[[long]]0 ") and len(texts[0].split()) < 400
    assert texts[1] == reply_of("again")
    assert "[[long]]" not in "".join(f.text for f in after if isinstance(f, LLMTextFrame))
    assert errors(run.up) == []


async def test_bad_key_is_one_error_and_no_retry(nats_server) -> None:
    """A wrong key gives exactly one authentication ErrorFrame; later turns do not
    connect again (the edge would throttle the address)."""
    async with (
        run_stack(make_config(nats_server.url)) as stack,
        run_proxy(stack.edge.port) as proxy,
    ):
        llm = service(proxy.url(), api_key="not-the-key")
        down, up = await run_test(
            llm,
            frames_to_send=[
                context_frame(("user", "hello")),
                context_frame(("user", "hello?")),
            ],
            pipeline_params=pipeline_params(),
            start_timeout=10.0,
        )
        assert proxy.connections == 1
    (error,) = errors(list(up))
    assert error.error_code == "authentication_failed"
    assert not llm.is_usable
    assert replies(down) == []


async def test_edge_error_becomes_error_frame(nats_server) -> None:
    """An edge error frame reaches Pipecat as an ErrorFrame with its error_code, the
    response still ends, and the service stays usable."""
    config = make_config(nats_server.url, models={"deploy": "chat"})
    async with run_stack(config, chats=0) as stack:
        llm = service(ws_url(stack), warm_persona=False)
        down, up = await run_test(
            llm,
            frames_to_send=[context_frame(("user", "anyone there?"))],
            pipeline_params=pipeline_params(),
            start_timeout=10.0,
        )
    (error,) = errors(list(up))
    assert error.error_code == "no_actor_available"
    assert replies(down) == [""]
    assert llm.is_usable


async def test_recovers_after_the_socket_is_cut(nats_server) -> None:
    """Cut between turns, the next turn reconnects silently; cut mid-reply, the turn
    ends with a non-fatal connection_lost and the one after it works."""
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 200})
    async with run_stack(config) as stack, run_proxy(stack.edge.port) as proxy:
        llm = service(proxy.url())
        async with run_pipeline(llm) as run:
            await run.send(context_frame(("user", "one")))
            await run.wait_responses(1)
            proxy.cut()
            await run.send(context_frame(("user", "two")))
            await run.wait_responses(2)
            assert proxy.connections == 2
            assert errors(run.up) == []

            mark = len(run.down)
            await run.send(context_frame(("user", "[[long]] three")))
            first = await run.wait_for(lambda f: isinstance(f, LLMTextFrame), after=mark)
            proxy.cut()
            await run.wait_for(lambda f: isinstance(f, LLMFullResponseEndFrame), after=first)
            await stack.wait_idle()  # the edge cancelled the orphaned turn
            await run.send(context_frame(("user", "four")))
            texts = await run.wait_responses(4)
    assert texts[0] == reply_of("one") and texts[1] == reply_of("two")
    assert texts[3] == reply_of("four")
    (error,) = errors(run.up)
    assert error.error_code == "connection_lost" and llm.is_usable
    assert proxy.connections == 3


async def test_resends_a_start_cut_before_any_text(nats_server, nats_client) -> None:
    """A socket cut after the start went out but before any text: the service
    reconnects and resends it, and the reply arrives once."""
    # A slow tool decision holds the chat reply back: no text can flow before it.
    config = make_config(nats_server.url, tool={"bench_tokens_per_s": 1})
    async with run_stack(config) as stack, run_proxy(stack.edge.port) as proxy:
        llm = service(proxy.url())
        async with (
            tool_starts_of(nats_client, llm.session_id) as tool_starts,
            run_pipeline(llm) as run,
        ):
            await run.send(context_frame(("user", "patience")))
            await tool_starts.wait(1)  # the edge took the start
            proxy.cut()
            texts = await run.wait_responses(1, within=20)
        assert len(tool_starts.seen) == 2
    assert texts == [reply_of("patience")]
    assert proxy.connections == 2
    assert errors(run.up) == []


async def test_recovers_after_an_edge_restart(nats_server, nats_client) -> None:
    """An edge restart closes the socket with 1001: idle, the next turn reconnects;
    mid-turn before any text (server_shutting_down), the start goes to the next edge."""
    port = free_port()
    config = make_config(
        nats_server.url,
        edge={"port": port, "shutdown_timeout_s": 0.1},
        tool={"bench_tokens_per_s": 1},
    )
    log = logging.getLogger("yap.test")
    async with run_stack(config) as stack, run_proxy(port) as proxy:
        llm = service(proxy.url())
        async with (
            tool_starts_of(nats_client, llm.session_id) as tool_starts,
            run_pipeline(llm) as run,
        ):
            await run.send(context_frame(("user", "before")))
            await run.wait_responses(1, within=20)
            await stack.edge.__aexit__(None, None, None)  # closes the idle socket: 1001
            second = EdgeServer(config, log)
            await second.__aenter__()
            try:
                await run.send(context_frame(("user", "after")))
                await run.wait_responses(2, within=20)
                await run.send(context_frame(("user", "during")))
                await tool_starts.wait(3)
            finally:
                # Ends the running turn with server_shutting_down before any text.
                await second.__aexit__(None, None, None)
            async with EdgeServer(config, log):
                texts = await run.wait_responses(3, within=20)
        assert len(tool_starts.seen) == 4  # "during" was sent twice
    assert texts == [reply_of("before"), reply_of("after"), reply_of("during")]
    assert errors(run.up) == []
    assert proxy.connections == 3


async def test_idle_close_reconnects_on_the_next_turn(nats_server) -> None:
    """The edge's idle close (4000) is no error: the next turn reconnects."""
    config = make_config(nats_server.url, edge={"idle_timeout_s": 0.3})
    async with run_stack(config) as stack, run_proxy(stack.edge.port) as proxy:
        llm = service(proxy.url())
        async with run_pipeline(llm) as run:
            await run.send(context_frame(("user", "hi")))
            await run.wait_responses(1)
            await proxy.wait_closes(1)
            await run.send(context_frame(("user", "still")))
            texts = await run.wait_responses(2)
    assert texts == [reply_of("hi"), reply_of("still")]
    assert proxy.connections == 2
    assert errors(run.up) == []


async def test_second_turn_reuses_the_session_on_one_socket(nats_server) -> None:
    """Two turns share one WebSocket; the persona is warmed once at connect and the
    second turn's history holds the first exchange."""
    async with run_stack(make_config(nats_server.url)) as stack, run_proxy(stack.edge.port) as p:
        llm = service(p.url())
        async with run_pipeline(llm) as run:
            await run.send(context_frame(("user", "first")))
            await run.wait_responses(1)
            await run.send(
                context_frame(("user", "first"), ("assistant", reply_of("first")), ("user", "next"))
            )
            await run.wait_responses(2)
        chat = stack.engines("chat")[0]
        assert p.connections == 1
        warms = client_warms(chat)
        assert len(warms) == 1 and chat.prompts[0].startswith(warms[0])
        assert f"User: first\nAssistant: {reply_of('first')}" in chat.prompts[1]


async def test_persona_update_sends_set_persona(nats_server) -> None:
    """An LLMUpdateSettingsFrame with a new persona style reaches the session at once
    (set_persona), is warmed, and shapes the next reply's prompt."""
    async with run_stack(make_config(nats_server.url)) as stack:
        llm = service(ws_url(stack))
        async with run_pipeline(llm) as run:
            await run.send(context_frame(("user", "hello")))
            await run.wait_responses(1)
            await run.send(LLMUpdateSettingsFrame(delta=YapLLMSettings(persona_style="savage")))
            await run.send(context_frame(("user", "and now")))
            await run.wait_responses(2)
        stored = await stack.edge.sessions.get(llm.session_id)
        chat = stack.engines("chat")[0]
    assert stored is not None and stored.persona_style == "savage"
    warms = client_warms(chat)
    assert len(warms) == 2 and STYLE_TEXTS["savage"] in warms[1]
    assert STYLE_TEXTS["savage"] in chat.prompts[1]
    assert STYLE_TEXTS["savage"] not in chat.prompts[0]
