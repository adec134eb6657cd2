"""Every ``error_code`` a client can see, from the edge or from an actor.

Codes are part of the wire contract: clients switch on them, so a code never
changes meaning and a new failure mode gets a new code, added here and to the
README's error table (a unit test holds the two together). The edge and the
actors both take their codes from this module, so an actor's ``Error`` or
``Rejected`` reaches the client with a code the client was told about.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTOR_BUSY",
    "ACTOR_DRAINING",
    "ACTOR_ERROR",
    "ACTOR_LOST",
    "ALL_CODES",
    "AUTHENTICATION_FAILED",
    "BAD_REQUEST",
    "BUS_UNAVAILABLE",
    "ENGINE_DEAD",
    "FIELD_TOO_LONG",
    "INTERNAL_ERROR",
    "INVALID_FIELD",
    "INVALID_JSON",
    "INVALID_MESSAGE",
    "INVALID_SESSION_ID",
    "MESSAGE_CODES",
    "MISSING_FIELD",
    "NO_ACTOR_AVAILABLE",
    "NO_SESSION",
    "RATE_LIMITED",
    "SERVER_AT_CAPACITY",
    "SERVER_SHUTTING_DOWN",
    "TURN_FAILURE_CODES",
    "TURN_TIMEOUT",
    "UNKNOWN_MESSAGE_TYPE",
]

# --- the connection --------------------------------------------------------------
AUTHENTICATION_FAILED: Final = "authentication_failed"
SERVER_AT_CAPACITY: Final = "server_at_capacity"
SERVER_SHUTTING_DOWN: Final = "server_shutting_down"
RATE_LIMITED: Final = "rate_limited"

# --- one client message ----------------------------------------------------------
INVALID_JSON: Final = "invalid_json"
INVALID_MESSAGE: Final = "invalid_message"
UNKNOWN_MESSAGE_TYPE: Final = "unknown_message_type"
MISSING_FIELD: Final = "missing_field"
INVALID_FIELD: Final = "invalid_field"
INVALID_SESSION_ID: Final = "invalid_session_id"
FIELD_TOO_LONG: Final = "field_too_long"
NO_SESSION: Final = "no_session"

# --- a turn (or a warm) that failed: an error frame, then a done with the code ----
# (TURN_FAILURE_CODES; server_shutting_down also ends a running turn so, but a start
# refused while the edge drains gets it alone.)
# Before an actor accepted the leg: no actor could take it.
NO_ACTOR_AVAILABLE: Final = "no_actor_available"
# After: the actor went silent, restarted, or the turn ran past its deadlines.
ACTOR_LOST: Final = "actor_lost"
TURN_TIMEOUT: Final = "turn_timeout"
BUS_UNAVAILABLE: Final = "bus_unavailable"
# Said by an actor, in a Rejected reply or an Error event.
ACTOR_BUSY: Final = "actor_busy"
ACTOR_DRAINING: Final = "actor_draining"
BAD_REQUEST: Final = "bad_request"
ENGINE_DEAD: Final = "engine_dead"
ACTOR_ERROR: Final = "actor_error"
INTERNAL_ERROR: Final = "internal_error"

TURN_FAILURE_CODES: Final = frozenset(
    {
        NO_ACTOR_AVAILABLE,
        ACTOR_LOST,
        TURN_TIMEOUT,
        BUS_UNAVAILABLE,
        ACTOR_BUSY,
        ACTOR_DRAINING,
        BAD_REQUEST,
        ENGINE_DEAD,
        ACTOR_ERROR,
        INTERNAL_ERROR,
    }
)
# Codes about one message the client sent: that message was refused, nothing else.
MESSAGE_CODES: Final = frozenset(
    {
        INVALID_JSON,
        INVALID_MESSAGE,
        UNKNOWN_MESSAGE_TYPE,
        MISSING_FIELD,
        INVALID_FIELD,
        INVALID_SESSION_ID,
        FIELD_TOO_LONG,
        NO_SESSION,
    }
)

ALL_CODES: Final = frozenset(
    {
        AUTHENTICATION_FAILED,
        SERVER_AT_CAPACITY,
        SERVER_SHUTTING_DOWN,
        RATE_LIMITED,
        *MESSAGE_CODES,
        *TURN_FAILURE_CODES,
    }
)
