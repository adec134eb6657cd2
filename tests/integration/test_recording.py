"""Recording through the real edge and actors (fake engines) on a real nats-server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from pathlib import Path

import msgspec
import nats
import pytest
from nats.js.errors import NotFoundError
from websockets.asyncio.client import ClientConnection

from bus import subjects
from bus.permissions import authorization_config, deployment_roles, new_passwords
from bus.recording import STREAM
from configs.schema import BusConfig
from edge.server import EdgeServer
from launcher.nats import NatsServer
from launcher.net import free_port
from replay.cli import amain, parse_args
from replay.driver import restore
from replay.errors import ReplayError
from replay.store import BusTarget, RecordingStore, connect
from replay.timeline import build_timeline
from tests.support.recording import recorded_session
from tests.support.stack import API_KEY, make_config, read_turn, recv_json, run_stack, start_message

ROOT = Path(__file__).resolve().parents[2]
RECORDING = {"enabled": True}
# _script cancels a long reply after a few tokens; at full speed it would be done first.
PACED = {"bench_tokens_per_s": 100}


async def _script(ws: ClientConnection, session_id: str) -> list[dict]:
    """A bad frame, a tool-yes turn, a barge-in, a cancel: what every test records."""
    acks = []
    await ws.send("garbage")
    assert (await recv_json(ws))["error_code"] == "invalid_json"
    await ws.send(start_message(session_id, "please look at my screen"))
    frames = await read_turn(ws)
    acks.append(frames[0])
    await ws.send(start_message(session_id, "first [[long]] story"))
    for _ in range(4):  # ack, toolcall, a few tokens
        await recv_json(ws)
    await ws.send(start_message(session_id, "second [[long]] story"))
    while (frame := await recv_json(ws))["type"] != "ack":
        pass
    for _ in range(4):
        await recv_json(ws)
    await ws.send(json.dumps({"type": "cancel"}))
    while (frame := await recv_json(ws))["type"] != "done":
        pass
    assert frame == {"type": "done", "cancelled": True}
    return acks


async def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await amain(parse_args(argv), {"YAP_API_KEY": API_KEY}, out, err)
    return code, out.getvalue(), err.getvalue()


async def test_recording_off_creates_no_stream(nats_server: NatsServer, nats_client) -> None:  # type: ignore[no-untyped-def]
    """With [recording] off (the default) a whole session leaves no stream behind."""
    async with run_stack(make_config(nats_server.url)) as stack, stack.client() as ws:
        await ws.send(start_message("off-1"))
        assert (await read_turn(ws))[-1]["type"] == "done"
    with pytest.raises(NotFoundError):
        await nats_client.jetstream().stream_info(STREAM)


async def test_session_is_recorded(nats_server: NatsServer, nats_client) -> None:  # type: ignore[no-untyped-def]
    """Frames as received, decisions, turns and the settings snapshot all land in the stream."""
    config = make_config(nats_server.url, recording=RECORDING, chat=PACED)
    async with run_stack(config) as stack, stack.client() as ws:
        acks = await _script(ws, "rec-1")
    session = await recorded_session(nats_client, "rec-1", turns=3)
    timeline = build_timeline(session)
    assert [t.toolcall_status for t in timeline.turns] == ["yes", "no", "no"]
    assert [t.ended_by for t in timeline.turns] == ["done", "barge_in", "cancel"]
    assert timeline.rejections == ["invalid_json"]
    assert [s.text for s in timeline.steps][:2] == [
        "garbage",
        start_message("rec-1", "please look at my screen"),
    ]
    assert session.settings is not None
    assert (session.settings.seed, session.settings.now) == (acks[0]["seed"], acks[0]["now"])
    assert session.deployment is not None and session.deployment.deploy == "both"
    kinds = {(e.direction, e.kind) for e in session.events}
    assert {("in", "tool.start"), ("in", "chat.start"), ("in", "cancel")} <= kinds
    assert {("out", "toolcall"), ("out", "token"), ("out", "done")} <= kinds


async def test_api_key_is_never_recorded(nats_server: NatsServer, nats_client) -> None:  # type: ignore[no-untyped-def]
    """Neither the handshake's key nor one a client sends along in a frame is stored."""
    config = make_config(nats_server.url, recording=RECORDING)
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("key-1", "hello"))
        await read_turn(ws)
        await ws.send(json.dumps({"type": "ping", "api_key": API_KEY}))
        await recv_json(ws)
        await ws.send(start_message("key-1", "done"))
        await read_turn(ws)
    await recorded_session(nats_client, "key-1", turns=2)
    store = RecordingStore(nats_client)
    stored = [msg.data async for msg in store.messages(subjects.recording_subjects())]
    assert len(stored) > 10
    assert not [data for data in stored if API_KEY.encode() in data]


async def test_redaction_blanks_user_text(nats_server: NatsServer, nats_client) -> None:  # type: ignore[no-untyped-def]
    """With redact = "blank" no utterance, history or persona text is stored; lengths are."""
    config = make_config(nats_server.url, recording={**RECORDING, "redact": "blank"})
    utterance = "hi zebracorn marmalade"  # the fake model echoes only the first word
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(
            start_message(
                "red-1", utterance, history_text="User: zebracorn", persona_text="a zebracorn bard"
            )
        )
        assert (await read_turn(ws))[-1]["type"] == "done"
    session = await recorded_session(nats_client, "red-1", turns=1)
    store = RecordingStore(nats_client)
    stored = [msg.data async for msg in store.messages(subjects.recording_subjects())]
    assert stored and not [data for data in stored if b"zebracorn" in data]
    tool_start = next(e for e in session.events if e.kind == "tool.start")
    assert tool_start.payload["user_utterance"] == "_" * len(utterance)
    assert tool_start.payload["redacted"] is True
    frame = json.loads(next(e for e in session.events if e.direction == "client").payload["text"])
    assert frame["persona_text"] == "_" * len("a zebracorn bard")
    assert session.settings is not None and session.settings.persona_text == "_" * 16
    assert any(e.kind == "token" for e in session.events)  # timing of the reply is kept


def _server_history_start(session_id: str, utterance: str, **extra: object) -> str:
    return json.dumps(
        {
            "type": "start",
            "session_id": session_id,
            "assistant_gender": "female",
            "user_utterance": utterance,
            "server_history": True,
            **extra,
        }
    )


@pytest.mark.parametrize("redact", [False, True])
async def test_server_history_is_snapshotted_and_restored(  # type: ignore[no-untyped-def]
    nats_server: NatsServer, nats_client, redact: bool
) -> None:
    """A session on server-kept history records the history its first turn started
    from (blanked when redacting), once, and replay's restore writes it back."""
    recording = {**RECORDING, "redact": "blank"} if redact else RECORDING
    config = make_config(nats_server.url, recording=recording)
    seeded = "User: the zebracorn line\nAssistant: noted"
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(_server_history_start("hist-1", "one", history_text=seeded))
        assert (await read_turn(ws))[-1]["type"] == "done"
        await ws.send(_server_history_start("hist-1", "two"))
        assert (await read_turn(ws))[-1]["type"] == "done"
        stored = await stack.edge.sessions.get("hist-1")
    assert stored is not None and stored.history.startswith(seeded + "\nUser: one")
    session = await recorded_session(nats_client, "hist-1", turns=2)
    snapshots = [e for e in session.events if e.kind == "turn" and e.payload.get("settings")]
    assert len(snapshots) == 1  # the history grew, the settings did not change
    assert session.settings is not None
    expected = "_" * len(seeded) if redact else seeded
    assert session.settings.history == expected
    assert await restore(nats_client, "hist-copy", build_timeline(session))
    kv = await nats_client.jetstream().key_value("yap_sessions")
    restored = msgspec.json.decode((await kv.get("hist-copy")).value)
    assert restored["history"] == expected


async def test_off_pauses_a_stream_left_recording(nats_server: NatsServer, nats_client) -> None:  # type: ignore[no-untyped-def]
    """An edge with recording off switches an existing stream to take imports only."""
    js = nats_client.jetstream()
    async with run_stack(make_config(nats_server.url, recording=RECORDING)):
        assert subjects.all_clients() in (await js.stream_info(STREAM)).config.subjects
    async with run_stack(make_config(nats_server.url)):
        info = await js.stream_info(STREAM)
        assert info.config.subjects == [subjects.all_imported()]


async def test_bus_roles_on_a_locked_bus(tmp_path: Path) -> None:
    """On a bus with a user per edge and actor id, two edges' records reach the stream
    as one session; only the replay user reads it and sets sessions."""
    edges, actors = ("edge-a", "edge-b"), ("tool-0", "chat-1")
    roles = deployment_roles(edges, actors)
    passwords = new_passwords(roles)
    async with NatsServer(
        tmp_path / "nats", extra_config=authorization_config(roles, passwords)
    ) as server:

        def bus(user: str) -> BusConfig:
            return BusConfig(url=server.url, user=user, password=passwords[user])

        config = make_config(server.url, recording=RECORDING)
        as_edge = {e: msgspec.structs.replace(config, bus=bus(e)) for e in edges}
        actor_buses = {a: bus(a) for a in actors}
        log = logging.getLogger("yap.test")
        async with (
            run_stack(as_edge["edge-a"], actor_buses=actor_buses, edge_id="edge-a") as stack,
            EdgeServer(as_edge["edge-b"], log, edge_id="edge-b") as other,
        ):
            async with stack.client() as ws:
                await ws.send(start_message("locked-1", "look at my screen"))
                assert (await read_turn(ws))[-1]["type"] == "done"
            # The session's next turn on another edge: the same recording.
            async with stack.client(f"ws://127.0.0.1:{other.port}/ws?api_key={API_KEY}") as ws:
                await ws.send(start_message("locked-1", "and now?"))
                assert (await read_turn(ws))[-1]["type"] == "done"
            violations: list[str] = []

            async def on_error(exc: Exception) -> None:
                violations.append(str(exc).lower())

            replay = await connect(BusTarget(server.url, "replay", passwords["replay"]))
            observer = await nats.connect(
                server.url, user="observer", password=passwords["observer"], error_cb=on_error
            )
            edge = await nats.connect(
                server.url,
                user="edge-a",
                password=passwords["edge-a"],
                inbox_prefix=subjects.inbox_prefix("edge-a"),
                error_cb=on_error,
            )
            try:
                session = await recorded_session(replay, "locked-1", turns=2)
                timeline = build_timeline(session)
                assert [t.toolcall_status for t in timeline.turns] == ["yes", "no"]
                out = [e for e in session.events if e.direction == "out"]
                assert {e.edge_id for e in out} == set(edges)
                assert {e.actor_id for e in out} == set(actors)
                assert await restore(replay, "replay-locked", timeline)
                restored = await stack.edge.sessions.get("replay-locked")
                assert restored is not None and session.settings is not None
                assert restored.seed == session.settings.seed
                # Neither an edge's user nor the observer may read the recording.
                for reader in (edge, observer):
                    with pytest.raises(ReplayError):
                        await RecordingStore(reader, timeout_s=0.5).session("locked-1")
            finally:
                await replay.close()
                await observer.close()
                await edge.close()
            assert violations and all("permissions violation" in v for v in violations)
            assert any(f"consumer.create.{STREAM}".lower() in v for v in violations), violations


async def test_export_import_round_trip(tmp_path: Path, nats_server: NatsServer) -> None:
    """Export, import into a server with live actors, export again: same file, no turn ran."""
    config = make_config(nats_server.url, recording=RECORDING, chat=PACED)
    async with run_stack(config) as stack, stack.client() as ws:
        await _script(ws, "exp-1")
    client = await nats.connect(nats_server.url)
    try:
        await recorded_session(client, "exp-1", turns=3)
        before = (await client.jetstream().stream_info(STREAM)).state
        first = tmp_path / "first.jsonl"
        code, _, err = await _cli(["--nats", nats_server.url, "export", "exp-1", "-o", str(first)])
        assert code == 0 and "exported 1 session" in err
        code, since, _ = await _cli(["--nats", nats_server.url, "export", "--since", "1h"])
        assert code == 0 and since == first.read_text()
        code, shown, _ = await _cli(["--nats", nats_server.url, "show", "exp-1"])
        assert code == 0 and "tool decision yes" in shown
        after = (await client.jetstream().stream_info(STREAM)).state
        assert (after.messages, after.last_seq) == (before.messages, before.last_seq)
    finally:
        await client.close()
    async with NatsServer(tmp_path / "other") as other:
        async with run_stack(make_config(other.url, recording=RECORDING)) as fresh:
            code, out, _ = await _cli(["--nats", other.url, "import", str(first)])
            assert code == 0 and out.startswith("imported exp-1: ")
            code, out, _ = await _cli(["--nats", other.url, "export", "exp-1"])
            assert fresh.running_requests() == 0
            assert all(not engine.prompts for engine in fresh.engines("tool"))
        assert out == first.read_text()
        with pytest.raises(ReplayError, match="already recorded"):
            await _cli(["--nats", other.url, "import", str(first)])
        code, out, _ = await _cli(["--nats", other.url, "list"])
        assert "exp-1" in out and "done cancelled cancelled" in out


async def test_replay_against_the_stack(tmp_path: Path, nats_server: NatsServer) -> None:
    """A strict replay of a recorded session matches turn for turn; a fanout reports percentiles."""
    config = make_config(nats_server.url, recording=RECORDING, chat=PACED)
    async with run_stack(config) as stack:
        async with stack.client() as ws:
            await _script(ws, "rp-1")
        client = await nats.connect(nats_server.url)
        try:
            await recorded_session(client, "rp-1", turns=3)
        finally:
            await client.close()
        url = f"ws://127.0.0.1:{stack.edge.port}/ws"
        base = ["--nats", nats_server.url, "replay", "rp-1", "--url", url]
        loose = ["--max-slowdown", "100", "--slack-ms", "10000"]
        code, out, err = await _cli([*base, "--strict", "--json", *loose])
        assert code == 0, err
        (report,) = json.loads(out)
        assert report["ok"] and report["failures"] == []
        assert [t["decision"]["now"] for t in report["turns"]] == ["yes", "no", "no"]
        assert [t["text"]["divergence"] for t in report["turns"]] == [None, None, None]
        assert all(t["frames"]["then"] == t["frames"]["now"] for t in report["turns"])
        plot = tmp_path / "fanout.png"
        code, out, _ = await _cli([*base, "--fanout", "2", "--asap", "--plot", str(plot)])
        assert code == 0
        assert "total=6" in out and "chat_ttfb_ms p50=" in out and "cancel_ms" in out
        assert plot.stat().st_size > 0


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "replay",
        *argv,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_one_line_errors(tmp_path: Path, nats_server: NatsServer) -> None:
    """A missing session, an unreachable server or edge, a bad file: one line, exit 2."""
    config = make_config(nats_server.url, recording=RECORDING)
    async with run_stack(config):
        code, err = await _run("--nats", nats_server.url, "show", "nosuch")
        assert (code, err) == (2, "replay: no recorded session 'nosuch'\n")
    closed = f"nats://127.0.0.1:{free_port()}"
    code, err = await _run("--nats", closed, "list")
    assert code == 2 and err.startswith(f"replay: cannot reach nats-server at {closed}")
    assert err.count("\n") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "yap-recording", "version": 1, "session_id": "s"\n')
    code, err = await _run("show", str(bad))
    assert (code, err) == (2, f"replay: {bad}:1: not JSON (Expecting ',' delimiter at column 60)\n")
    future = tmp_path / "future.jsonl"
    future.write_text('{"format": "yap-recording", "version": 9, "session_id": "s"}\n')
    code, err = await _run("show", str(future))
    assert code == 2 and "format version 9 is not supported" in err
    good = tmp_path / "good.jsonl"
    async with run_stack(config) as stack, stack.client() as ws:
        await ws.send(start_message("err-1"))
        await read_turn(ws)
        client = await nats.connect(nats_server.url)
        try:
            await recorded_session(client, "err-1", turns=1)
        finally:
            await client.close()
    code, _, _ = await _cli(["--nats", nats_server.url, "export", "err-1", "-o", str(good)])
    edge = f"ws://127.0.0.1:{free_port()}/ws"
    code, err = await _run("replay", str(good), "--url", edge, "--no-restore")
    assert code == 2 and err.startswith(f"replay: cannot reach the edge at {edge}")
    assert err.count("\n") == 1
