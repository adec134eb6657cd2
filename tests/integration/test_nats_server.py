"""The real nats-server that the tests and ``just up`` run."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from launcher.errors import NatsServerError
from launcher.nats import NatsServer
from tests.support.procs import process_id


async def test_pub_sub(nats_client: Client) -> None:
    """A message published on a subject reaches its subscriber."""
    sub = await nats_client.subscribe("yap.test.echo")
    await nats_client.publish("yap.test.echo", b"hello")
    msg = await sub.next_msg(timeout=2)
    assert msg.data == b"hello"


async def test_jetstream_enabled(nats_client: Client) -> None:
    """JetStream answers, and a key-value bucket stores and returns a value."""
    js = nats_client.jetstream()
    info = await js.account_info()
    assert info.streams == 0
    kv = await js.create_key_value(bucket="yap_test")
    await kv.put("greeting", b"hi")
    assert (await kv.get("greeting")).value == b"hi"


async def test_restart_keeps_port_store_and_clients(nats_server: NatsServer) -> None:
    """After restart() the port, the JetStream data and a reconnecting client are back."""
    port, pid = nats_server.port, nats_server.pid
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    client = await nats.connect(
        nats_server.url,
        reconnect_time_wait=0.05,
        max_reconnect_attempts=-1,
        reconnected_cb=on_reconnect,
    )
    try:
        kv = await client.jetstream().create_key_value(bucket="yap_restart")
        await kv.put("kept", b"yes")
        sub = await client.subscribe("yap.test.after")

        await nats_server.restart()

        assert nats_server.port == port
        assert nats_server.pid not in (None, pid)
        async with asyncio.timeout(10):
            await reconnected.wait()
        await client.publish("yap.test.after", b"back")
        assert (await sub.next_msg(timeout=2)).data == b"back"
        kv = await client.jetstream().key_value("yap_restart")
        assert (await kv.get("kept")).value == b"yes"
    finally:
        await client.close()


async def test_kill_then_start(nats_server: NatsServer) -> None:
    """kill() ends the process at once; start() brings it back on the same port."""
    port, pid = nats_server.port, nats_server.pid
    assert pid is not None
    await nats_server.kill()
    assert nats_server.pid is None
    assert process_id(pid) is None
    await nats_server.start()
    assert nats_server.port == port
    client = await nats.connect(nats_server.url)
    await client.close()


async def test_stop_leaves_no_process(tmp_path: Path) -> None:
    """Leaving the context manager stops the server and reaps it."""
    async with NatsServer(tmp_path / "nats") as server:
        pid = server.pid
        assert pid is not None and process_id(pid) is not None
        config = server.config_path.read_text()
    assert process_id(pid) is None
    assert server.pid is None
    assert "jetstream" in config and str(tmp_path / "nats") in config


async def test_extra_config_is_applied(tmp_path: Path) -> None:
    """Text in extra_config reaches the server: here, a required token."""
    extra = 'authorization { token: "s3cret" }'
    async with NatsServer(tmp_path / "nats", extra_config=extra) as server:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=1)
        client = await nats.connect(server.url, token="s3cret")
        await client.close()


async def test_bad_config_fails_with_log_tail(tmp_path: Path) -> None:
    """A server that exits at start raises NatsServerError quoting its own output."""
    server = NatsServer(tmp_path / "nats", extra_config="this is { not a config")
    with pytest.raises(NatsServerError, match="exited") as caught:
        await server.start()
    assert "nats-server.log" in str(caught.value)
    assert server.pid is None


async def test_port_in_use_fails(tmp_path: Path) -> None:
    """A fixed port that another socket holds is an error, not a silent hang."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = NatsServer(tmp_path / "nats", port=port, ready_timeout_s=5)
        with pytest.raises(NatsServerError, match=r"(?i)address already in use"):
            await server.start()
