"""The replay tool's exceptions: each is one line a user can act on."""

from __future__ import annotations

__all__ = [
    "CorruptFile",
    "NoRecordingStream",
    "ReplayError",
    "SessionNotFound",
    "TargetUnreachable",
    "UnknownFormat",
]


class ReplayError(Exception):
    """Root of the replay tool's errors; the CLI prints the message and exits non-zero."""


class SessionNotFound(ReplayError):
    """No session with that id is recorded (or in the file)."""


class NoRecordingStream(ReplayError):
    """The server has no recording stream."""


class TargetUnreachable(ReplayError):
    """A nats-server or an edge does not answer."""


class CorruptFile(ReplayError):
    """An export file that does not parse; the message names the file and line."""


class UnknownFormat(ReplayError):
    """An export file of a format version this tool does not read."""
