"""Stable ``error_code`` values of the wire protocol, and the edge's exception root.

Codes are part of the contract: clients switch on them, so they never change
meaning; new failure modes get new codes.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTOR_ERROR",
    "ACTOR_LOST",
    "AUTHENTICATION_FAILED",
    "BUS_UNAVAILABLE",
    "FIELD_TOO_LONG",
    "FRAME_TOO_LARGE",
    "INTERNAL_ERROR",
    "INVALID_FIELD",
    "INVALID_JSON",
    "INVALID_MESSAGE",
    "INVALID_SESSION_ID",
    "MISSING_FIELD",
    "NO_ACTOR_AVAILABLE",
    "NO_SESSION",
    "RATE_LIMITED",
    "SERVER_AT_CAPACITY",
    "SERVER_SHUTTING_DOWN",
    "TURN_TIMEOUT",
    "UNKNOWN_MESSAGE_TYPE",
    "EdgeError",
    "ProtocolError",
]

AUTHENTICATION_FAILED: Final = "authentication_failed"
SERVER_AT_CAPACITY: Final = "server_at_capacity"
INVALID_JSON: Final = "invalid_json"
INVALID_MESSAGE: Final = "invalid_message"
UNKNOWN_MESSAGE_TYPE: Final = "unknown_message_type"
MISSING_FIELD: Final = "missing_field"
INVALID_FIELD: Final = "invalid_field"
INVALID_SESSION_ID: Final = "invalid_session_id"
FIELD_TOO_LONG: Final = "field_too_long"
FRAME_TOO_LARGE: Final = "frame_too_large"
NO_SESSION: Final = "no_session"
RATE_LIMITED: Final = "rate_limited"
NO_ACTOR_AVAILABLE: Final = "no_actor_available"
ACTOR_LOST: Final = "actor_lost"
ACTOR_ERROR: Final = "actor_error"
TURN_TIMEOUT: Final = "turn_timeout"
BUS_UNAVAILABLE: Final = "bus_unavailable"
SERVER_SHUTTING_DOWN: Final = "server_shutting_down"
INTERNAL_ERROR: Final = "internal_error"


class EdgeError(Exception):
    """Root of the edge's exceptions."""


class ProtocolError(EdgeError):
    """A client message the edge cannot act on; becomes one error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
