"""The Pipecat service in real Pipecat pipelines against the whole system in
processes, with the tiny CPU models (transformers engine, warm prefix cache)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("pipecat")

from pipecat.frames.frames import ErrorFrame, InterruptionFrame, LLMTextFrame
from pipecat.tests.utils import run_test

from integrations.pipecat import ReconnectPolicy, YapErrorFrame, YapLLMService
from launcher.nats import NatsServer
from tests.support.pipecat import (
    LLMUsageMetricsData,
    TTFBMetricsData,
    context_frame,
    metrics,
    pipeline_params,
    replies,
    run_pipeline,
)
from tests.support.proxy import run_proxy
from tests.support.system import API_KEY, System, run_system

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> AsyncIterator[System]:
    workdir = tmp_path_factory.mktemp("pipecat")
    async with (
        NatsServer(workdir / "nats") as nats_server,
        run_system(workdir, nats_server.url, model_cache) as running,
    ):
        yield running


def service(url: str, **overrides: Any) -> YapLLMService:
    options: dict[str, Any] = {
        "url": url,
        "api_key": API_KEY,
        "session_id": uuid.uuid4().hex,
        "assistant_gender": "man",
        "persona_style": "nerdy",
        "connect_timeout_s": 15.0,  # the first warm compiles nothing, but CPUs are shared
        **overrides,
    }
    return YapLLMService(**options)


def ws_url(system: System) -> str:
    return f"ws://127.0.0.1:{system.edge_port}/ws"


async def test_turn_with_the_real_models(system: System) -> None:
    """A turn streams Start, text, End from the tiny models, with TTFB and usage."""
    llm = service(ws_url(system))
    down, up = await run_test(
        llm,
        frames_to_send=[context_frame(("user", "who was Columbus?"))],
        pipeline_params=pipeline_params(),
        start_timeout=30.0,
    )
    (text,) = replies(down)
    assert text  # gibberish from random weights, but some
    (ttfb,) = metrics(down, TTFBMetricsData)
    assert ttfb.value > 0
    (usage,) = metrics(down, LLMUsageMetricsData)
    assert 0 < usage.value.completion_tokens <= 48 and usage.value.prompt_tokens > 0
    assert [f for f in up if isinstance(f, ErrorFrame)] == []


async def test_second_turn_hits_the_prefix_cache(system: System) -> None:
    """Two turns on one pipeline share one socket and one session; the persona warmed
    at connect is a prefix-cache hit (cached tokens > 0) on the second turn."""
    async with run_proxy(system.edge_port) as proxy:
        llm = service(proxy.url())
        async with run_pipeline(llm, start_within=30) as run:
            await run.send(context_frame(("user", "tell me about ships")))
            (first,) = await run.wait_responses(1, within=60)
            await run.send(
                context_frame(
                    ("user", "tell me about ships"),
                    ("assistant", first),
                    ("user", "and about the sea?"),
                )
            )
            await run.wait_responses(2, within=60)
        assert proxy.connections == 1
    usages = metrics(run.down, LLMUsageMetricsData)
    assert len(usages) == 2
    cached = usages[1].value.cache_read_input_tokens
    assert cached is not None and 0 < cached < usages[1].value.prompt_tokens
    assert usages[1].value.prompt_tokens > usages[0].value.prompt_tokens  # history grew


async def test_interruption_stops_the_engine(system: System) -> None:
    """An InterruptionFrame mid-reply leaves no engine request running and no text of
    the interrupted reply downstream; the next turn answers normally."""
    llm = service(ws_url(system))
    async with run_pipeline(llm, start_within=30) as run:
        await run.send(context_frame(("user", "tell me a long story")))
        await run.wait_for(lambda f: isinstance(f, LLMTextFrame), within=60)
        await run.send(InterruptionFrame())
        interrupted = await run.wait_for(lambda f: isinstance(f, InterruptionFrame))
        loads = await system.actor_load()
        assert loads and not any(loads.values())
        await run.send(context_frame(("user", "shorter, please")))
        texts = await run.wait_responses(2, within=60)
    after = replies(run.down[interrupted:])
    assert after == [texts[1]] and texts[1]
    assert [f for f in run.up if isinstance(f, ErrorFrame)] == []


async def test_bad_key_is_one_error(system: System) -> None:
    """A wrong key: one authentication ErrorFrame, one connection, no retry."""
    async with run_proxy(system.edge_port) as proxy:
        llm = service(proxy.url(), api_key="wrong")
        down, up = await run_test(
            llm,
            frames_to_send=[context_frame(("user", "hi")), context_frame(("user", "hi?"))],
            pipeline_params=pipeline_params(),
            start_timeout=30.0,
        )
        assert proxy.connections == 1
    (error,) = [f for f in up if isinstance(f, ErrorFrame)]
    assert isinstance(error, YapErrorFrame) and error.error_code == "authentication_failed"
    assert replies(down) == []


async def test_recovers_after_the_edge_restarts(system: System) -> None:
    """The edge process restarts (its clients get 1001): the next turn reconnects
    within the reconnect budget and is answered, with no error."""
    async with run_proxy(system.edge_port) as proxy:
        llm = service(proxy.url(), reconnect=ReconnectPolicy(budget_s=60.0))
        async with run_pipeline(llm, start_within=30) as run:
            await run.send(context_frame(("user", "before")))
            await run.wait_responses(1, within=60)
            # A clean stop (SIGTERM, exit 0) that nobody asked the launcher for: it
            # closes our socket with 1001, and the launcher starts a new edge.
            assert await system.processes["edge"].stop() == 0
            await proxy.wait_closes(1)  # the edge closed our socket on its way out
            await system.until_ready("edge", restarts=1, within=60)
            await run.send(context_frame(("user", "after")))
            texts = await run.wait_responses(2, within=90)
        assert proxy.connections == 2
    assert all(texts)
    assert [f for f in run.up if isinstance(f, ErrorFrame)] == []
