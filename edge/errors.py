"""The edge's exception root and its leaves; the error codes are in ``bus.codes``."""

from __future__ import annotations

__all__ = ["EdgeError", "ProtocolError"]


class EdgeError(Exception):
    """Root of the edge's exceptions."""


class ProtocolError(EdgeError):
    """A client message the edge cannot act on; becomes one error frame.

    Args:
        code: one of ``bus.codes.ALL_CODES``.
        message: what is wrong, for a human reading the client's logs.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
