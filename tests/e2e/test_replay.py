"""Record real sessions, move them to another server, replay them on a fresh system.

The chat actor runs the tiny random-weight model with greedy decoding and
``ignore_eos`` (replies of a fixed 200 tokens, so a turn is surely still running
when the test interrupts it). A random-weight tool model would almost never say
"yes", so the tool actor runs the scripted fake engine, which answers yes when
the utterance mentions the screen: the decision is forced, honestly, by the
engine, and travels the real bus, edge and recording like any other.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest
from websockets.asyncio.client import ClientConnection, connect

from configs.loader import ENV_OVERRIDES
from launcher.nats import NatsServer
from replay.cli import amain, parse_args
from replay.store import BusTarget
from replay.store import connect as store_connect
from tests.support.fakes import REPO_ROOT
from tests.support.ports import free_port
from tests.support.recording import recorded_session
from tests.support.stack import read_turn, recv_json, start_message
from tests.support.system import API_KEY, run_system

pytestmark = pytest.mark.timeout(600)

SID = "e2e-recorded-1"
# The chat actor's own next-turn warm races the session's next start (it is
# cancelled by it), so whether a turn's prefix was cached is timing; with it off,
# the CPU engine's cache state is the same then and now and every text compares.
CHAT: dict[str, Any] = {"sampling": {"ignore_eos": True}, "warm_next_turn": False}
SECTIONS: dict[str, dict[str, Any]] = {
    "tool": {"backend": "fake"},
    "chat": {**CHAT, "max_out": 200},
    "recording": {"enabled": True},
}
# The changed deployment of the strict test: CHAT_MAX_OUT=100 (the same key; the
# launcher library takes the config as it is, env overrides are the entrypoint's).
SHORTER: dict[str, dict[str, Any]] = {
    **SECTIONS,
    "chat": {**CHAT, "max_out": 100},
}
# Latency is not what these tests check (the machine is shared): only the text,
# decisions and frames are held strictly.
LOOSE = ["--max-slowdown", "100", "--slack-ms", "60000"]


async def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await amain(parse_args(argv), {"YAP_API_KEY": API_KEY}, out, err)
    return code, out.getvalue(), err.getvalue()


async def _until_tokens(ws: ClientConnection, count: int) -> None:
    seen = 0
    while seen < count:
        seen += (await recv_json(ws, 60))["type"] == "token"


async def _record(ws: ClientConnection) -> list[list[dict[str, Any]]]:
    """A plain turn, a tool-yes turn, a barge-in (and its turn), a cancel."""
    turns = []
    await ws.send(start_message(SID, "who was Columbus?"))
    turns.append(await read_turn(ws, 60))
    await ws.send(start_message(SID, "what is on my screen right now?"))
    turns.append(await read_turn(ws, 60))
    await ws.send(start_message(SID, "tell me a long story"))
    await _until_tokens(ws, 3)
    await ws.send(start_message(SID, "and then what happened?"))
    while (await recv_json(ws, 60))["type"] != "ack":
        pass
    turns.append(await read_turn(ws, 60))
    await ws.send(start_message(SID, "one more story please"))
    await _until_tokens(ws, 3)
    await ws.send(json.dumps({"type": "cancel"}))
    while (frame := await recv_json(ws, 60))["type"] != "done":
        pass
    assert frame == {"type": "done", "cancelled": True}
    return turns


async def test_record_export_import_replay(tmp_path: Path, model_cache: Path) -> None:
    """Replayed on a fresh system the session matches; with CHAT_MAX_OUT changed strict fails."""
    export = tmp_path / "session.jsonl"
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    async with (
        NatsServer(tmp_path / "nats-a") as bus_a,
        run_system(tmp_path / "a", bus_a.url, model_cache, sections=SECTIONS) as system_a,
    ):
        async with connect(system_a.url) as ws:
            completed = await _record(ws)
        client = await nats.connect(bus_a.url)
        try:
            await recorded_session(client, SID, turns=5)
        finally:
            await client.close()
        code, _, _ = await _cli(["--nats", bus_a.url, "export", SID, "-o", str(export)])
        assert code == 0
    assert [t[1]["status"] for t in completed[:2]] == ["no", "yes"]

    async with NatsServer(tmp_path / "nats-b") as bus_b:
        code, out, _ = await _cli(["--nats", bus_b.url, "import", str(export)])
        assert code == 0 and out.startswith(f"imported {SID}: ")
        async with run_system(tmp_path / "b", bus_b.url, model_cache, sections=SECTIONS) as fresh:
            url = f"ws://127.0.0.1:{fresh.edge_port}/ws"
            code, out, err = await _cli(
                ["--nats", bus_b.url, "replay", SID, "--url", url, "--strict", "--json", *LOOSE]
            )
            assert code == 0, err
        (report,) = json.loads(out)
        turns = report["turns"]
        assert [t["decision"] for t in turns] == [
            {"then": then, "now": then} for then in ("no", "yes", "no", "no", "no")
        ]
        assert [t["text"]["divergence"] for t in turns] == [None] * 5
        assert all(t["frames"]["then"] == t["frames"]["now"] for t in turns)
        assert turns[2]["frames"]["now"] == ["ack", "toolcall:no", "token"]  # barged in
        assert turns[4]["frames"]["now"] == ["ack", "toolcall:no", "token", "done:cancelled"]
        # The replayed text is the text the original client was sent.
        for index, frames in zip((0, 1, 3), completed, strict=True):
            assert turns[index]["text"]["now"] == frames[-2]["normalized_text"] != ""

        async with run_system(tmp_path / "c", bus_b.url, model_cache, sections=SHORTER) as changed:
            url = f"ws://127.0.0.1:{changed.edge_port}/ws"
            code, out, err = await _cli(
                ["--nats", bus_b.url, "replay", str(export), "--url", url, "--strict", *LOOSE]
            )
        assert code == 1
        for turn in (1, 2, 4):
            assert f"replay --strict: turn {turn}: text diverges at character" in err
        assert "turn 3:" not in err and "turn 5:" not in err  # interrupted before 100 tokens
        assert "DIFFERS at char" in out


def _launcher(*args: str, cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``python -m <module> args`` in ``cwd``, as an operator runs it from a checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


async def test_just_up_records_and_the_replay_user_reads(tmp_path: Path) -> None:
    """`just up` (one bus user per id) records a session; `python -m replay` reads it
    with the replay user's access file alone, which dies with the run."""
    (tmp_path / "config.toml").write_text(
        '[edge]\napi_key = "e2e-key"\n\n'
        '[tool]\nbackend = "fake"\n\n[chat]\nbackend = "fake"\n\n'
        "[actor]\nheartbeat_interval_s = 0.1\n\n"
        "[recording]\nenabled = true\n\n"
        '[log]\nlevel = "INFO"\nformat = "text"\n'
    )
    edge_port = free_port()
    ports = ("--edge-port", str(edge_port), "--nats-port", "0", "--nats-monitor-port", "0")
    up = _launcher(
        *("launcher", "up", "--detach", "--config", "config.toml", *ports),
        cwd=tmp_path,
        timeout_s=300,
    )
    assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
    access_path = tmp_path / ".yap" / "run" / "replay.json"
    try:
        access = json.loads(access_path.read_text())
        assert access["user"] == "replay" and access["password"]
        assert access_path.stat().st_mode & 0o777 == 0o600
        async with connect(f"ws://127.0.0.1:{edge_port}/ws?api_key=e2e-key") as ws:
            await ws.send(start_message("up-recorded", "look at my screen"))
            assert (await read_turn(ws, 60))[-1]["type"] == "done"
        nc = await store_connect(BusTarget(access["url"], access["user"], access["password"]))
        try:
            session = await recorded_session(nc, "up-recorded", turns=1)
        finally:
            await nc.close()
        out = {e.edge_id for e in session.events if e.direction == "out"}
        assert out == {"edge-0"}
        listed = _launcher("replay", "list", cwd=tmp_path, timeout_s=60)
        assert listed.returncode == 0, listed.stderr
        assert "up-recorded" in listed.stdout and " done" in listed.stdout, listed.stdout
        shown = _launcher("replay", "show", "up-recorded", cwd=tmp_path, timeout_s=60)
        assert shown.returncode == 0 and "tool decision yes" in shown.stdout, shown.stderr
    finally:
        down = _launcher("launcher", "down", cwd=tmp_path, timeout_s=120)
    assert down.returncode == 0, down.stderr
    assert not access_path.exists()
