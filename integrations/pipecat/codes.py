"""Error codes and close codes as the Pipecat service sees them, and what each means.

The wire codes are the README's (the edge's ``error_code`` values); the service adds
two of its own for failures that happen on its side of the socket. Pipecat wants
each error's :class:`~pipecat.utils.errors.ErrorCategory`, and a permanent category
takes the service out of use, so only a rejected key maps to one: a refused message
(``invalid_field`` for an odd persona style, ``field_too_long``) is about that
message, not about the service.
"""

from __future__ import annotations

from typing import Final

from pipecat.utils.errors import ErrorCategory

from bus import codes

__all__ = [
    "AUTHENTICATION_FAILED",
    "CONNECTION_FAILED",
    "CONNECTION_LOST",
    "PERMANENT_CLOSE_CODES",
    "RATE_LIMITED",
    "SERVER_AT_CAPACITY",
    "SERVER_SHUTTING_DOWN",
    "TURN_FAILURE_CODES",
    "category_for",
]

# --- the edge's codes (bus/codes.py, the README's "error_code" table) -------------
AUTHENTICATION_FAILED: Final = codes.AUTHENTICATION_FAILED
SERVER_AT_CAPACITY: Final = codes.SERVER_AT_CAPACITY
SERVER_SHUTTING_DOWN: Final = codes.SERVER_SHUTTING_DOWN
RATE_LIMITED: Final = codes.RATE_LIMITED

# Codes that end a turn the edge had acknowledged (each followed by a ``done``):
# before this turn's ``ack`` they can only be an older turn's last words.
TURN_FAILURE_CODES: Final = codes.TURN_FAILURE_CODES

# Codes about what the client sent: that message was refused, the service is fine.
_MESSAGE_CODES: Final = codes.MESSAGE_CODES

# --- the service's own codes ------------------------------------------------------
# The socket dropped mid-turn after text had gone downstream (resending would repeat
# it), or the frames stopped coming.
CONNECTION_LOST: Final = "connection_lost"
# No connection could be made (or kept) within the reconnect budget.
CONNECTION_FAILED: Final = "connection_failed"

# 1008 is the edge's answer to a wrong key; retrying only earns the address a 429.
PERMANENT_CLOSE_CODES: Final = frozenset({1008})


def category_for(code: str) -> ErrorCategory:
    """The Pipecat error category of an ``error_code``."""
    if code == AUTHENTICATION_FAILED:
        return ErrorCategory.AUTHENTICATION
    if code == RATE_LIMITED:
        return ErrorCategory.RATE_LIMIT
    if code in _MESSAGE_CODES:
        return ErrorCategory.APPLICATION
    if code in (CONNECTION_LOST, CONNECTION_FAILED):
        return ErrorCategory.CONNECTIVITY
    return ErrorCategory.SERVER
