"""A loopback TCP proxy that counts connections and can cut them, for network faults."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = ["TcpProxy", "run_proxy"]


@dataclass
class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_port``.

    ``connections`` counts the client connections that reached the target (a client
    knocking while the target is down is turned away at once and not counted);
    :meth:`cut` aborts every open one on both sides (a lost network: the client sees
    close 1006, no close frame).
    """

    target_port: int
    port: int = 0
    connections: int = 0
    closes: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def wait_closes(self, count: int, within: float = 10.0) -> None:
        """Wait until ``count`` proxied connections have ended (either side closed)."""
        async with asyncio.timeout(within):
            while self.closes < count:
                self.changed.clear()
                await self.changed.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_pipe(reader, up_writer))
                group.create_task(_pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()
            self._closed()

    def _closed(self) -> None:
        self.closes += 1
        self.changed.set()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()  # one side gone: the other goes too


@contextlib.asynccontextmanager
async def run_proxy(target_port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(target_port=target_port)
    server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            yield proxy
        finally:
            proxy.cut()
            server.close()
