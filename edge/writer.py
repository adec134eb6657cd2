"""Writes one client's frames: all that is pending in one socket write, when a burst
of work is over.

The edge calls :meth:`FrameWriter.flush` when it has finished a piece of work for
the connection (the dispatcher's pass over the bus events, a client message, a leg
reply). If the socket takes data without waiting, everything pending goes to the
websockets protocol and then to the socket in one ``writelines``: what
``ws.send()`` does per frame, for the batch, from the task that made the frames, so
no task wakes just to write. Only while the socket is backed up (its buffer past
the high-water mark) or ``STREAM_FLUSH_MS`` asks to wait does the writer task
(:meth:`run`) take over, with ``ws.send()``'s flow control; meanwhile token deltas
merge in the outbox. This leans on the websockets connection's ``protocol``,
``transport``, ``paused`` and ``send_in_progress`` attributes, which its own
``send()`` uses the same way.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from edge import frames
from edge.frames import FrameEncoder
from edge.outbox import Outbox

__all__ = ["FrameWriter"]


class FrameWriter:
    """Args:
    ws: the client's connection.
    flush_s: ``STREAM_FLUSH_MS`` in seconds: a token frame waits that long for
        more deltas (0: never).
    token_frames: counts the token frames written.
    """

    def __init__(
        self,
        ws: ServerConnection,
        encoder: FrameEncoder,
        *,
        flush_s: float,
        token_frames: Counter,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._ws = ws
        self._encode = encoder.encode_bytes
        self._flush_s = flush_s
        self._token_frames = token_frames
        self._log = log
        self._outbox = Outbox()
        self._wake = asyncio.Event()
        self._sending = False  # run() holds frames it has not sent yet
        self._stopping = False

    def push(self, frame: frames.Frame) -> None:
        self._outbox.push(frame)

    def push_token(self, text: str) -> None:
        self._outbox.push_token(text)

    def flush(self) -> None:
        """Write what is pending now, in one socket write; else leave it to run()."""
        if not self._outbox:
            return
        ws = self._ws
        if (
            self._flush_s > 0
            or self._sending  # frames taken earlier must go first
            or ws.paused
            or ws.send_in_progress is not None
            or ws.protocol.state is not State.OPEN
        ):
            self._wake.set()
            return
        protocol = ws.protocol
        tokens = 0
        for frame in self._outbox.take():
            tokens += frame["type"] == "token"
            protocol.send_text(self._encode(frame))
        try:
            ws.transport.writelines(protocol.data_to_send())
        except (OSError, RuntimeError) as exc:  # the socket is going away; recv() will say
            self._log.debug("write failed: %r", exc)
        if tokens:
            self._token_frames.inc(tokens)

    async def run(self) -> None:
        """Write what flush() could not, with flow control, until stop()."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._flush_s > 0 and self._outbox.head_is_token():
                await asyncio.sleep(self._flush_s)  # let more deltas merge into it
            while self._outbox:
                self._sending = True
                try:
                    for frame in self._outbox.take():
                        if frame["type"] == "token":
                            self._token_frames.inc()
                        await self._ws.send(self._encode(frame), text=True)
                except ConnectionClosed:
                    return
                finally:
                    self._sending = False
            if self._stopping:
                return

    def stop(self) -> None:
        """Write what is left, then let run() return."""
        self.flush()
        self._stopping = True
        self._wake.set()
