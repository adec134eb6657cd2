"""Server-kept history: the real edge and actors with fake engines, on a real nats-server.

The session's entry in the JetStream bucket is read with a watch, so a test waits for
the edge's write itself, never for time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue
from websockets.asyncio.client import ClientConnection, connect

from actors.prompts.chat import HISTORY_LABEL
from bus.history import append_turn
from clients import bench, warmup
from configs.schema import Config
from edge.server import SESSIONS_BUCKET, EdgeServer
from edge.sessions import KvSessionStore, MemorySessionStore, SessionSettings
from tests.support.stack import API_KEY, Stack, make_config, read_turn, recv_json, run_stack

_log = logging.getLogger("yap.test")


def start(session_id: str, utterance: str, **fields: Any) -> str:
    """A start that asks the server to keep the history; no history_text unless given."""
    message = {
        "type": "start",
        "session_id": session_id,
        "assistant_gender": "female",
        "user_utterance": utterance,
        "server_history": True,
        **fields,
    }
    return json.dumps(message)


def final_text(frames: list[dict[str, Any]]) -> str:
    return next(f for f in frames if f["type"] == "final")["normalized_text"]


def history_of(prompt: str) -> str:
    """The history segment of a chat prompt rendered by FakeTokenizer's template."""
    if HISTORY_LABEL not in prompt:
        return ""
    return prompt.split(HISTORY_LABEL, 1)[1].split("\n<|user|>", 1)[0]


class Entries:
    """One session's entries in the session bucket, as the edge writes them."""

    def __init__(self, kv: KeyValue, watcher: KeyValue.KeyWatcher) -> None:
        self.kv = kv
        self._watcher = watcher
        self._decoder = msgspec.json.Decoder(SessionSettings)

    @classmethod
    @contextlib.asynccontextmanager
    async def watch(cls, nc: NatsClient, session_id: str) -> AsyncIterator[Entries]:
        kv = await nc.jetstream().key_value(SESSIONS_BUCKET)  # the edge made it
        watcher = await kv.watch(session_id)
        assert await watcher.updates(5) is None  # no entry yet: the session is new
        try:
            yield cls(kv, watcher)
        finally:
            await watcher.stop()

    async def next(self, within: float = 5.0) -> SessionSettings:
        """The next value written; fails the test if none comes ``within`` s."""
        entry = await self._watcher.updates(within)
        assert entry is not None and entry.value is not None
        return self._decoder.decode(entry.value)

    async def writes(self) -> int:
        """Writes to the bucket so far (its stream's last sequence number)."""
        return (await self.kv.status()).stream_info.state.last_seq


async def turn(ws: ClientConnection, message: str) -> list[dict[str, Any]]:
    await ws.send(message)
    return await read_turn(ws)


async def test_old_client_history_text_is_unchanged(nats_server, nats_client) -> None:
    """A start without server_history runs on its own history_text, byte for byte; the
    ack is the one it always was, and nothing is added to the stored history."""
    config = make_config(nats_server.url)
    history = "user: free text\nbot: not canonical"
    async with run_stack(config) as stack, stack.client() as ws:
        async with Entries.watch(nats_client, "old") as entries:
            await ws.send(start("old", "hello", history_text=history, server_history=False))
            frames = await read_turn(ws)
            stored = await entries.next()  # the start's write, as before
        assert "server_history" not in frames[0]
        assert frames[-1]["usage"]["completion_tokens"] > 0
        await ws.send(start("old", "again", history_text="", server_history=False))
        await read_turn(ws)
        engine = stack.engines("chat")[0]
    assert history_of(engine.prompts[0]) == history
    assert history_of(engine.prompts[1]) == ""
    assert stored.history == "" and stored.assistant_gender == "woman"


async def test_server_history_turns_accumulate_the_canonical_history(
    nats_server, nats_client
) -> None:
    """A client that sends only utterances gets its conversation back in each prompt, for
    both legs; the stored history is the canonical one with the replies as the client got
    them, and the session is written once per turn."""
    config = make_config(nats_server.url)
    session_id = uuid.uuid4().hex
    history = ""
    before: list[str] = []
    async with run_stack(config) as stack:
        async with Entries.watch(nats_client, session_id) as entries:
            async with stack.client() as ws:
                for utterance in ("hello there", "tell me more", "and then?"):
                    before.append(history)
                    frames = await turn(ws, start(session_id, utterance))
                    assert frames[0]["server_history"] is True
                    history = append_turn(history, utterance, final_text(frames))
                    stored = await entries.next()
                    assert stored.history == history
            # One write per turn: the new session, its chat actor and the exchange together.
            assert await entries.writes() == 3
        chat = stack.engines("chat")[0]
        tool = stack.engines("tool")[0]
    assert [history_of(p) for p in chat.prompts] == before
    assert before[2].startswith("User: hello there\nAssistant: hello0 hello1")
    assert before[2] in tool.prompts[-1]
    assert stored.chat_actor == "chat-1" and stored.assistant_gender == "woman"


async def test_history_text_with_server_history_seeds_or_clears_it(
    nats_server, nats_client
) -> None:
    """A history_text sent with server_history replaces the stored history (a client
    migrating its conversation to the server); an empty one clears it."""
    config = make_config(nats_server.url)
    seed = "User: we met before\nAssistant: I remember."
    async with run_stack(config) as stack, stack.client() as ws:
        async with Entries.watch(nats_client, "seeded") as entries:
            first = await turn(ws, start("seeded", "hi again", history_text=seed))
            seeded = append_turn(seed, "hi again", final_text(first))
            assert (await entries.next()).history == seeded
            await turn(ws, start("seeded", "go on"))
            await entries.next()
            cleared = await turn(ws, start("seeded", "fresh start", history_text=""))
            assert (await entries.next()).history == append_turn(
                "", "fresh start", final_text(cleared)
            )
        prompts = stack.engines("chat")[0].prompts
    assert [history_of(p) for p in prompts] == [seed, seeded, ""]


async def test_the_cap_keeps_the_newest_whole_lines(nats_server, nats_client) -> None:
    """Past edge.server_history_max_chars the oldest lines go; what is stored, and what
    the actors get, stays within the cap and ends with the last exchange."""
    config = make_config(nats_server.url, edge={"server_history_max_chars": 300})
    async with run_stack(config) as stack, stack.client() as ws:
        async with Entries.watch(nats_client, "capped") as entries:
            for index in range(6):
                frames = await turn(ws, start("capped", f"question{index} please"))
                stored = await entries.next()
                assert len(stored.history) <= 300
                last = append_turn("", f"question{index} please", final_text(frames))
                assert stored.history.endswith(last)
        prompts = stack.engines("chat")[0].prompts
    assert all(len(history_of(p)) <= 300 for p in prompts)
    assert not stored.history.startswith("User: question0")  # the oldest went
    assert stored.history.startswith("User: question")  # at a line boundary


# Replies paced so that a client can cut one mid-stream; "[[long]]" anywhere in the
# prompt (so in the history, once said) makes a reply max_out tokens long.
PACED = {"bench_tokens_per_s": 200, "max_out": 60}


async def test_barge_in_keeps_the_words_and_the_reply_sent(nats_server, nats_client) -> None:
    """A turn cut by a barge-in start adds its utterance and exactly the reply text the
    client was sent before the new turn's ack; the new turn runs on that history. Each
    turn writes the session once."""
    config = make_config(nats_server.url, chat=PACED)
    async with run_stack(config) as stack, stack.client() as ws:
        async with Entries.watch(nats_client, "barge") as entries:
            await ws.send(start("barge", "[[long]] tell me everything"))
            received = ""
            while len(received) < 20:
                if (frame := await recv_json(ws))["type"] == "token":
                    received += frame["text"]
            await ws.send(start("barge", "stop, a question"))
            while (frame := await recv_json(ws))["type"] != "ack":
                assert frame["type"] == "token", frame  # a barge-in ends the old turn silently
                received += frame["text"]
            cut = append_turn("", "[[long]] tell me everything", received)
            frames = await read_turn(ws)
            final = append_turn(cut, "stop, a question", final_text(frames))
            while (stored := await entries.next()).history != final:
                assert stored.history == cut
            assert await entries.writes() == 2
        prompts = stack.engines("chat")[0].prompts
    assert history_of(prompts[-1]) == cut
    assert cut.endswith("Assistant: " + " ".join(received.split()))


async def test_cancel_keeps_what_was_sent_and_nothing_before_any_text(
    nats_server, nats_client
) -> None:
    """A cancel after some reply text adds the utterance and that text (what was on its
    way to the client included); a failed turn, and a client that went away mid-reply,
    add nothing."""
    config = make_config(nats_server.url, chat=PACED)
    async with run_stack(config) as stack:
        async with Entries.watch(nats_client, "cut") as entries, stack.client() as ws:
            await ws.send(start("cut", "[[long]] part one"))
            received = ""
            cancelled = False
            while (frame := await recv_json(ws))["type"] != "done":
                received += frame["text"] if frame["type"] == "token" else ""
                if len(received) > 20 and not cancelled:
                    await ws.send('{"type": "cancel"}')
                    cancelled = True
            assert frame == {"type": "done", "cancelled": True}
            kept = append_turn("", "[[long]] part one", received)
            assert (await entries.next()).history == kept

            failed = await turn(ws, start("cut", "[[fail]] this breaks"))
            assert failed[-1]["error_code"] == "actor_error"
            await turn(ws, start("cut", "finally"))
        async with stack.client() as ws:  # a client that goes away mid-reply
            await ws.send(start("cut", "then gone"))
            while (await recv_json(ws))["type"] != "token":
                pass
        await stack.wait_idle()
        async with stack.client() as ws:
            await turn(ws, start("cut", "back"))
        prompts = stack.engines("chat")[0].prompts
    histories = [history_of(p) for p in prompts]
    assert len(histories) == 4  # the failed turn's prompt is not recorded by the engine
    assert histories[1] == kept  # "finally" ran on it: the failed turn added nothing
    assert histories[2] == histories[3]  # the turn of the client that left added nothing
    assert histories[3].startswith(kept + "\nUser: finally\nAssistant: finally0")
    assert "then gone" not in histories[3] and "this breaks" not in histories[3]


async def test_cancel_before_any_reply_text_adds_nothing(nats_server, nats_client) -> None:
    """A turn cancelled before the client saw any of its reply leaves the history as it
    was; the session's one write still stores the new session."""
    # The first word comes two seconds after the chat leg starts: the cancel is first.
    config = make_config(nats_server.url, chat={"bench_tokens_per_s": 0.5, "max_out": 2})
    async with run_stack(config) as stack, stack.client() as ws:
        async with Entries.watch(nats_client, "early") as entries:
            await ws.send(start("early", "never mind", history_text="User: a\nAssistant: b."))
            assert (await recv_json(ws))["type"] == "ack"
            await ws.send('{"type": "cancel"}')
            while (frame := await recv_json(ws))["type"] != "done":
                assert frame["type"] == "toolcall", frame  # no token came before the cancel
            assert frame == {"type": "done", "cancelled": True}
            stored = await entries.next()
        await stack.wait_idle()
    assert stored.history == "User: a\nAssistant: b."  # the seed, and nothing of the turn
    assert stored.assistant_gender == "woman"


@contextlib.asynccontextmanager
async def edge_of(stack: Stack, config: Config, edge_id: str) -> AsyncIterator[EdgeServer]:
    """Another edge beside the stack's, once it has heard every actor."""
    async with EdgeServer(config, _log, edge_id=edge_id) as edge:
        async with asyncio.timeout(5):
            while len(edge.registry.snapshot()) < len(stack.actors):
                edge.registry.heard.clear()
                await edge.registry.heard.wait()
        yield edge


def url_of(edge: EdgeServer) -> str:
    return f"ws://127.0.0.1:{edge.port}/ws?api_key={API_KEY}"


async def test_the_conversation_survives_an_edge_restart(nats_server) -> None:
    """The history lives in the bucket: an edge restarted with the same id, and then
    another edge, go on with the conversation where it was."""
    config = make_config(nats_server.url)
    history = ""
    before: list[str] = []
    async with run_stack(config) as stack:
        for edge_id in ("edge-r", "edge-r", "edge-other"):
            # Leaving the block stops the edge; the turn's write is done by then.
            async with edge_of(stack, config, edge_id) as edge, connect(url_of(edge)) as ws:
                before.append(history)
                frames = await turn(ws, start("lasting", f"{edge_id} says hi"))
                history = append_turn(history, f"{edge_id} says hi", final_text(frames))
        prompts = stack.engines("chat")[0].prompts
    assert [history_of(p) for p in prompts] == before
    assert before[2].count("User: ") == 2


async def test_next_turn_is_read_from_the_warm_when_the_server_keeps_the_history(
    nats_server,
) -> None:
    """With server_history and only utterances sent, each turn's prompt starts with the
    prefix the chat actor warmed after the previous reply: all but the utterance."""
    config = make_config(nats_server.url)
    async with run_stack(config) as stack, stack.client() as ws:
        engine = stack.engines("chat")[0]
        for utterance in ("hello there", "tell me more", "and then?"):
            engine.warm_seen.clear()
            await turn(ws, start("warm", utterance))
            async with asyncio.timeout(5):
                await engine.warm_seen.wait()  # the actor's warm of the next turn
    assert len(engine.warmed_ids) == 3 and len(engine.prompt_ids) == 3
    for warm, prompt in zip(engine.warmed_ids[:2], engine.prompt_ids[1:], strict=True):
        assert prompt[: len(warm)] == warm
        tail = engine.tokenizer.decode(prompt[len(warm) :])
        assert len(tail) < 40, tail  # the utterance and its markup
    assert "and then?" in engine.tokenizer.decode(engine.prompt_ids[2][len(engine.warmed_ids[1]) :])


async def test_an_oversized_entry_keeps_its_newest_history(nats_server, nats_client) -> None:
    """An entry that would not fit one bus message (control characters are six bytes of
    JSON each) is stored with its oldest history lines dropped, not kept only locally."""
    js = nats_client.jetstream()
    kv = await js.create_key_value(bucket="sizes", history=1)
    store = KvSessionStore(
        kv,
        MemorySessionStore(ttl_s=60, max_sessions=10),
        _log,
        max_value_bytes=nats_client.max_payload,
    )
    lines = [f"User: {i} " + "\x01" * 1000 for i in range(300)]  # about 1.8 MB of JSON
    settings = SessionSettings(assistant_gender="man", history="\n".join(lines))
    await store.put("big", settings)
    entry = await kv.get("big")
    assert entry.value is not None and len(entry.value) <= nats_client.max_payload
    stored = await store.get("big")
    assert stored is not None and stored.assistant_gender == "man"
    assert stored.history and settings.history.endswith(stored.history)
    assert stored.history.split("\n")[0] in lines


async def test_warmup_and_bench_hold_a_server_kept_conversation(nats_server) -> None:
    """clients.warmup --turns 3 --server-history and clients.bench --server-history in
    persistent mode complete every turn, and each turn runs on the session's history."""
    config = make_config(nats_server.url)
    async with run_stack(config) as stack:
        env = {"SERVER_WS_URL": stack.url, "YAP_API_KEY": API_KEY}
        out = io.StringIO()
        assert await warmup.amain(["--turns", "3", "--server-history", "hi"], env, out) == 0
        chat = stack.engines("chat")[0]
        histories = [history_of(p) for p in chat.prompts]
        assert histories[0] == "" and histories[1].startswith("User: hi\nAssistant: hi0")
        assert histories[2].startswith(histories[1] + "\nUser: ")
        chat.clear_records()
        argv = ["-n", "3", "-c", "1", "--mode", "persistent", "--server-history", "--json", "yo"]
        assert await bench.amain(argv, env, io.StringIO(), io.StringIO()) == 0
        histories = [history_of(p) for p in chat.prompts]
    one = append_turn("", "yo", fake_reply("yo"))
    assert histories == ["", one, append_turn(one, "yo", fake_reply("yo"))]


def fake_reply(tag: str) -> str:
    """The fake chat engine's reply to an utterance whose first word is ``tag``."""
    return " ".join([f"{tag}{i}" for i in range(11)] + ["end."])
