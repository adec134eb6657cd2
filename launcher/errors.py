"""The launcher's exceptions, under one root.

::

    LauncherError
    ├── NatsServerError      nats-server is missing, failed to start or to get ready
    ├── StartupTimeout       a service did not get ready in time
    ├── ServiceExited        a service exited while it should have been running
    ├── AlreadyRunning       another launcher holds the pid file
    ├── PlanError            (launcher.plan) the config cannot run as asked
    └── PortInUse            (launcher.preflight) a port it needs is taken
"""

from __future__ import annotations

import signal

__all__ = [
    "AlreadyRunning",
    "LauncherError",
    "NatsServerError",
    "ServiceExited",
    "StartupTimeout",
    "describe_exit",
]


class LauncherError(Exception):
    """Root of everything the launcher raises on purpose."""


class NatsServerError(LauncherError):
    """nats-server could not be found, started, or did not become ready."""


class StartupTimeout(LauncherError):
    """A service did not report ready within its deadline."""


class ServiceExited(LauncherError):
    """A service exited on its own; ``code`` is its exit status (negative: a signal)."""

    def __init__(self, name: str, code: int) -> None:
        super().__init__(f"{name} exited unexpectedly ({describe_exit(code)})")
        self.name = name
        self.code = code


class AlreadyRunning(LauncherError):
    """Another launcher is running from the same run directory."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"yap-bus is already running (pid {pid}); stop it with `just down`")
        self.pid = pid


def describe_exit(code: int) -> str:
    """``code 1`` or ``killed by SIGKILL``, for log lines."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"code {code}"
