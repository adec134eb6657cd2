"""msgpack encoding of bus events: one encoder and typed decoders per process."""

from __future__ import annotations

import msgspec

from bus.events import EdgeStats, Heartbeat, InboundEvent, OutboundEvent, Reply

__all__ = ["BusDecodeError", "Codec"]


class BusDecodeError(ValueError):
    """A payload on the bus that is not a valid event; log it and drop it."""


class Codec:
    """Encodes any event and decodes each direction into its typed union.

    Decoding is the validation: after it, fields have their declared types.
    """

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._inbound = msgspec.msgpack.Decoder(InboundEvent)
        self._outbound = msgspec.msgpack.Decoder(OutboundEvent)
        self._reply = msgspec.msgpack.Decoder(Reply)
        self._heartbeat = msgspec.msgpack.Decoder(Heartbeat)
        self._edge_stats = msgspec.msgpack.Decoder(EdgeStats)

    def encode(self, event: msgspec.Struct) -> bytes:
        return self._encoder.encode(event)

    def decode_inbound(self, data: bytes) -> InboundEvent:
        return self._decode(self._inbound, data)

    def decode_outbound(self, data: bytes) -> OutboundEvent:
        return self._decode(self._outbound, data)

    def decode_reply(self, data: bytes) -> Reply:
        return self._decode(self._reply, data)

    def decode_heartbeat(self, data: bytes) -> Heartbeat:
        return self._decode(self._heartbeat, data)

    def decode_edge_stats(self, data: bytes) -> EdgeStats:
        return self._decode(self._edge_stats, data)

    @staticmethod
    def _decode(decoder: msgspec.msgpack.Decoder, data: bytes):  # type: ignore[no-untyped-def]
        try:
            return decoder.decode(data)
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise BusDecodeError(str(exc)) from exc
        except RecursionError:
            raise BusDecodeError("payload nested too deeply") from None
