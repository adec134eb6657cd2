"""The warmup and bench clients against an in-process stub Yap server.

The stub speaks the protocol with canned frames. It paces its tokens by a
WebSocket ping round trip each, so a client that barges in after a few tokens
always does so mid-stream, with no sleeps.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bus.history import append_turn
from clients import bench, warmup
from clients.turn import open_stream, run_turn, start_message

API_KEY = "stub_key"
REPLY = "Hello there friend. This stub reply has enough words to interrupt it midway. Bye now."
WORDS = [word + " " for word in REPLY.split(" ")]
NORMALIZED = REPLY
# How the stub orders a barge-in's frames: the old turn's cancelled done before
# the new ack (as the seed), after it, or never.
BargeOrder = Literal["done_then_ack", "ack_then_done", "ack_only"]


@dataclass
class StubServer:
    """A canned Yap server; records what clients sent.

    Acks carry a fresh ``turn_id`` as the real edge's do; with ``tag_frames`` every
    other frame of a turn carries it too.
    """

    barge_order: BargeOrder = "done_then_ack"
    tag_frames: bool = False
    url: str = ""
    connections: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)

    def starts(self) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == "start"]

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        if query.get("api_key") != [API_KEY]:
            error = {"type": "error", "error_code": "authentication_failed", "message": "bad key"}
            await _send(ws, error)
            await ws.close(1008)
            return
        self.connections += 1
        current: asyncio.Task[None] | None = None
        turn_id = ""
        async with asyncio.TaskGroup() as group:
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    self.received.append(message)
                    kind = message.get("type")
                    interrupted = current is not None and not current.done()
                    if interrupted and current is not None:
                        current.cancel()
                        await asyncio.wait([current])
                    cancelled_done = self._tag({"type": "done", "cancelled": True}, turn_id)
                    if kind == "cancel" and interrupted:
                        await _send(ws, cancelled_done)
                    elif kind == "start":
                        utterance = message["user_utterance"]
                        if "[[reject]]" in utterance:
                            error = {"type": "error", "error_code": "rate_limited"}
                            await _send(ws, {**error, "message": "slow down"})
                            continue
                        if interrupted and self.barge_order == "done_then_ack":
                            await _send(ws, cancelled_done)
                        turn_id = uuid.uuid4().hex
                        ack = {
                            "type": "ack",
                            "for": "start",
                            "seed": 7,
                            "now": "Monday",
                            "assistant_gender": message.get("assistant_gender"),
                            "persona_style": message.get("persona_style"),
                            "turn_id": turn_id,
                        }
                        await _send(ws, ack)
                        if interrupted and self.barge_order == "ack_then_done":
                            await _send(ws, cancelled_done)
                        current = group.create_task(self._turn(ws, utterance, turn_id))
            except ConnectionClosed:
                pass
            finally:
                if current is not None:
                    current.cancel()

    def _tag(self, frame: dict[str, Any], turn_id: str) -> dict[str, Any]:
        return {**frame, "turn_id": turn_id} if self.tag_frames else frame

    async def _turn(self, ws: ServerConnection, utterance: str, turn_id: str) -> None:
        try:
            if "[[hang]]" in utterance:
                await asyncio.Event().wait()
            status = "yes" if "screen" in utterance else "no"
            await _send(ws, self._tag({"type": "toolcall", "status": status, "raw": "[]"}, turn_id))
            for word in WORDS:
                await _send(ws, self._tag({"type": "token", "text": word}, turn_id))
                # One ping round trip per token: the client has read the token by then.
                await (await ws.ping())
            final = {"type": "final", "normalized_text": NORMALIZED}
            await _send(ws, self._tag(final, turn_id))
            done = {"type": "done", "usage": {"completion_tokens": len(WORDS)}}
            await _send(ws, self._tag(done, turn_id))
        except ConnectionClosed:
            pass


async def _send(ws: ServerConnection, frame: Mapping[str, Any]) -> None:
    await ws.send(json.dumps(frame))


@asynccontextmanager
async def _stub(
    barge_order: BargeOrder = "done_then_ack", *, tag_frames: bool = False
) -> AsyncIterator[StubServer]:
    stub = StubServer(barge_order=barge_order, tag_frames=tag_frames)
    async with serve(stub.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        stub.url = f"ws://127.0.0.1:{port}/ws"
        yield stub


def _env(stub: StubServer, **extra: str) -> dict[str, str]:
    return {"SERVER_WS_URL": stub.url, "YAP_API_KEY": API_KEY, **extra}


async def _bench_json(
    stub: StubServer, *argv: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    status = await bench.amain(["--json", *argv], env or _env(stub), out, err)
    return status, json.loads(out.getvalue())


# --- warmup --------------------------------------------------------------------


async def test_warmup_prints_ack_toolcall_stream_and_metrics() -> None:
    """Warmup prints the ACK, the tool decision, the streamed text and two JSON lines."""
    async with _stub() as stub:
        out = io.StringIO()
        status = await warmup.amain(
            ["--gender", "male", "look", "at", "my", "screen"],
            _env(stub, PERSONA_STYLE="savage"),
            out,
        )
    text = out.getvalue()
    assert status == 0, text
    assert "ACK start → seed=7 now='Monday' gender=male style=savage" in text
    assert "TOOLCALL status=yes raw=[]" in text
    assert "TOOLCALL ttfb_ms=" in text and "CHAT ttfb_ms=" in text
    assert REPLY in text  # streamed as it arrived
    lines = text.strip().splitlines()
    metrics, final = json.loads(lines[-2]), json.loads(lines[-1])
    assert metrics["type"] == "metrics" and metrics["ok"] is True
    assert metrics["chunks"] == len(WORDS)
    assert metrics["chars"] == len(NORMALIZED)
    for key in (
        "ttfb_ms",
        "ttfb_toolcall_ms",
        "total_ms",
        "stream_ms",
        "time_to_first_complete_sentence_ms",
        "time_to_first_3_words_ms",
    ):
        assert metrics[key] is not None and metrics[key] >= 0
    assert final == {"type": "final_text", "text": NORMALIZED}
    (start,) = stub.starts()
    assert start["user_utterance"] == "look at my screen"
    assert start["assistant_gender"] == "male" and start["persona_style"] == "savage"


async def test_warmup_reports_authentication_failure() -> None:
    """A wrong API key ends the warmup with the server's error code and status 1."""
    async with _stub() as stub:
        out = io.StringIO()
        status = await warmup.amain(["hi"], _env(stub, YAP_API_KEY="wrong"), out)
    assert status == 1
    assert "[ERROR] authentication_failed: bad key" in out.getvalue()


async def test_warmup_recv_timeout() -> None:
    """A server that stops sending ends the warmup with a receive timeout."""
    async with _stub() as stub:
        out = io.StringIO()
        status = await warmup.amain(["[[hang]]"], _env(stub, RECV_TIMEOUT_SEC="0.2"), out)
    assert status == 1
    assert "[ERROR] recv timeout" in out.getvalue()
    assert "ACK start" in out.getvalue()


# --- bench ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["new-connection", "persistent"])
async def test_bench_json_both_modes(mode: str) -> None:
    """Six turns at concurrency three all succeed and every latency has six samples."""
    async with _stub() as stub:
        status, report = await _bench_json(stub, "-n", "6", "-c", "3", "--mode", mode)
    assert status == 0
    assert (report["total"], report["ok"], report["errors"], report["timeouts"]) == (6, 6, {}, 0)
    assert report["mode"] == mode and report["concurrency"] == 3
    for name in (
        "toolcall_ttfb_ms",
        "chat_ttfb_ms",
        "first_sentence_ms",
        "first_3_words_ms",
        "total_ms",
    ):
        summary = report["metrics"][name]
        assert summary["count"] == 6
        assert summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"]
    assert report["metrics"]["cancel_ms"] is None
    assert report["barge_in"] is None
    sessions = {start["session_id"] for start in stub.starts()}
    assert len(stub.starts()) == 6
    if mode == "persistent":
        assert stub.connections == 3 and len(sessions) == 3
    else:
        assert stub.connections == 6 and len(sessions) == 6


async def test_bench_persistent_sessions_carry_their_conversation() -> None:
    """In persistent mode each session's next start carries its history so far, in the
    canonical format, with the reply as the client received it; --no-history sends none."""
    async with _stub() as stub:
        status, _ = await _bench_json(stub, "-n", "3", "-c", "1", "--mode", "persistent", "hey")
        assert status == 0
        histories = [start["history_text"] for start in stub.starts()]
    one = append_turn("", "hey", NORMALIZED)
    assert histories == ["", one, append_turn(one, "hey", NORMALIZED)]
    async with _stub() as stub:
        status, _ = await _bench_json(
            stub, "-n", "2", "-c", "1", "--mode", "persistent", "--no-history"
        )
        assert status == 0 and [s["history_text"] for s in stub.starts()] == ["", ""]


async def test_warmup_holds_a_conversation() -> None:
    """--turns 2 sends the second start with the first exchange as its history and prints
    each turn's usage."""
    async with _stub() as stub:
        out = io.StringIO()
        status = await warmup.amain(["--turns", "2", "hi", "there"], _env(stub), out)
        first, second = stub.starts()
    text = out.getvalue()
    assert status == 0, text
    assert first["history_text"] == "" and first["user_utterance"] == "hi there"
    assert second["history_text"] == append_turn("", "hi there", NORMALIZED)
    assert second["session_id"] == first["session_id"]
    usage = [json.loads(line) for line in text.splitlines() if line.startswith('{"type": "usage"')]
    assert [u["completion_tokens"] for u in usage] == [len(WORDS), len(WORDS)]


async def test_server_history_clients_send_only_utterances() -> None:
    """With --server-history, warmup's and bench's starts ask the server to keep the
    history and carry none of their own; --no-history cannot go with it."""
    async with _stub() as stub:
        out = io.StringIO()
        status = await warmup.amain(["--turns", "2", "--server-history", "hi"], _env(stub), out)
        assert status == 0, out.getvalue()
        bench_status, _ = await _bench_json(
            stub, "-n", "2", "-c", "1", "--mode", "persistent", "--server-history", "hey"
        )
        assert bench_status == 0
        starts = stub.starts()
    assert [s["user_utterance"] for s in starts] == [
        "hi",
        *warmup.DEFAULT_MESSAGES[:1],
        "hey",
        "hey",
    ]
    assert all(s["server_history"] is True and "history_text" not in s for s in starts)
    with pytest.raises(SystemExit):
        bench.parse_args(["--server-history", "--no-history"], {})


async def test_bench_turns_per_connection() -> None:
    """In persistent mode, K turns per connection means a reconnect every K turns."""
    async with _stub() as stub:
        status, report = await _bench_json(
            stub, "-n", "6", "-c", "1", "--mode", "persistent", "--turns-per-connection", "2"
        )
    assert status == 0 and report["ok"] == 6
    assert report["turns_per_connection"] == 2
    assert stub.connections == 3


@pytest.mark.parametrize("tag_frames", [False, True])
@pytest.mark.parametrize("mode", ["new-connection", "persistent"])
@pytest.mark.parametrize("order", ["done_then_ack", "ack_then_done", "ack_only"])
async def test_bench_barge_in_with_start(mode: str, order: BargeOrder, tag_frames: bool) -> None:
    """Every second turn is interrupted by a new start; each interruption is acknowledged."""
    async with _stub(order, tag_frames=tag_frames) as stub:
        status, report = await _bench_json(
            stub, "-n", "6", "-c", "3", "--mode", mode, "--barge-in", "--barge-in-after", "3"
        )
    assert status == 0, report
    assert report["ok"] == 6 and report["errors"] == {}
    assert report["barge_in"] == {
        "planned": 3,
        "sent": 3,
        "acknowledged": 3,
        "late": 0,
        "not_sent": 0,
    }
    assert report["metrics"]["cancel_ms"]["count"] == 3
    # Three plain turns and the three barge-in turns completed; the interrupted did not.
    assert report["metrics"]["total_ms"]["count"] == 6
    assert len(stub.starts()) == 9


@pytest.mark.parametrize("mode", ["new-connection", "persistent"])
async def test_bench_barge_in_with_cancel(mode: str) -> None:
    """A cancel mid-stream is acknowledged by the old turn's cancelled done."""
    async with _stub() as stub:
        status, report = await _bench_json(
            stub, "-n", "6", "-c", "3", "--mode", mode, "--barge-in", "--barge-in-kind", "cancel"
        )
    assert status == 0, report
    assert report["ok"] == 6
    assert report["barge_in"]["acknowledged"] == 3
    assert report["metrics"]["cancel_ms"]["count"] == 3
    assert report["metrics"]["total_ms"]["count"] == 3  # the cancelled turns are not latencies
    assert sum(1 for m in stub.received if m["type"] == "cancel") == 3


async def test_bench_counts_errors_by_code() -> None:
    """Refused starts are counted by their error code and fail the run."""
    async with _stub() as stub:
        status, report = await _bench_json(
            stub, "-n", "4", "-c", "2", "--mode", "persistent", "[[reject]]"
        )
    assert status == 1
    assert report["ok"] == 0 and report["errors"] == {"rate_limited": 4}
    assert report["example_error"] == "rate_limited: slow down"


async def test_bench_authentication_failure() -> None:
    """A wrong API key shows up as authentication_failed for every turn."""
    async with _stub() as stub:
        status, report = await _bench_json(
            stub, "-n", "3", "-c", "3", env=_env(stub, YAP_API_KEY="nope")
        )
    assert status == 1
    assert report["errors"] == {"authentication_failed": 3}


async def test_bench_timeouts() -> None:
    """Turns that outlive --timeout are counted as timeouts, not errors."""
    async with _stub() as stub:
        status, report = await _bench_json(
            stub, "-n", "2", "-c", "2", "--timeout", "0.2", "[[hang]]"
        )
    assert status == 1
    assert report["timeouts"] == 2 and report["errors"] == {}


async def test_bench_connect_failure() -> None:
    """An unreachable server is an error per turn, not a crash."""
    async with _stub() as stub:
        url = stub.url
    status, report = await _bench_json(stub, "-n", "2", "-c", "1", "--url", url)
    assert status == 1
    assert report["errors"] == {"connect_failed": 2}


async def test_bench_text_report() -> None:
    """Without --json the report is the seed's one-line-per-metric text."""
    async with _stub() as stub:
        out, err = io.StringIO(), io.StringIO()
        status = await bench.amain(
            ["-n", "2", "-c", "2", "--barge-in", "--barge-in-every", "1"], _env(stub), out, err
        )
    text = out.getvalue()
    assert status == 0, text
    assert text.startswith(f"url={stub.url} mode=new-connection total=2 conc=2 ok=2 err=0")
    for name in (
        "toolcall_ttfb_ms",
        "chat_ttfb_ms",
        "first_sentence_ms",
        "first_3_words_ms",
        "total_ms",
        "cancel_ms",
    ):
        assert f"\n{name} p50=" in text
    assert "barge_in planned=2 sent=2 acknowledged=2" in text
    assert err.getvalue() == ""  # no progress bar when stderr is not a terminal


async def test_turn_keeps_frames_in_order() -> None:
    """run_turn returns the frames in arrival order with the decoded outcome."""
    async with _stub() as stub, open_stream(stub.url, API_KEY) as stream:
        result = await run_turn(stream, start_message("s", "hello"))
    assert [f.type for f in result.frames][:2] == ["ack", "toolcall"]
    assert [f.type for f in result.frames][-2:] == ["final", "done"]
    times = [f.at for f in result.frames]
    assert times == sorted(times) and times[0] >= result.sent_at
    assert result.ok and result.toolcall_status == "no" and result.text == NORMALIZED
    assert result.usage == {"completion_tokens": len(WORDS)}


# --- the real entrypoints ------------------------------------------------------


async def _run_module(module: str, *argv: str, env: Mapping[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *argv,
        env={**env, "PYTHONPATH": "."},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode() + stderr.decode()


async def test_bench_module_entrypoint() -> None:
    """``python -m clients.bench`` runs end to end and prints one JSON object."""
    async with _stub() as stub:
        code, output = await _run_module(
            "clients.bench",
            "-n",
            "2",
            "-c",
            "2",
            "--mode",
            "persistent",
            "--json",
            env=_env(stub),
        )
    assert code == 0, output
    assert json.loads(output)["ok"] == 2


async def test_warmup_module_entrypoint() -> None:
    """``python -m clients.warmup`` runs end to end and ends with the final text."""
    async with _stub() as stub:
        code, output = await _run_module("clients.warmup", "hi", "there", env=_env(stub))
    assert code == 0, output
    assert json.loads(output.strip().splitlines()[-1])["text"] == NORMALIZED


def test_bench_rejects_turns_per_connection_without_persistent() -> None:
    """--turns-per-connection only makes sense with --mode persistent."""
    with pytest.raises(SystemExit):
        bench.parse_args(["--turns-per-connection", "2"], {})


async def test_bench_plot(tmp_path: Path) -> None:
    """--plot saves a PNG of the latency distributions (needs the bench extra)."""
    pytest.importorskip("matplotlib")
    path = tmp_path / "latency.png"
    async with _stub() as stub:
        status, _ = await _bench_json(stub, "-n", "4", "-c", "2", "--barge-in", "--plot", str(path))
    assert status == 0
    assert path.read_bytes().startswith(b"\x89PNG")


def test_progress_bar_redraws_in_place() -> None:
    """The progress bar redraws one line with counts and ends it with a newline."""
    out = io.StringIO()
    progress = bench.ProgressBar(2, out, enabled=True)
    progress.advance(bench.IterationOutcome(0, "ok"))
    progress.advance(bench.IterationOutcome(1, "timeout"))
    progress.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("] 2/2 failed=1\n")
