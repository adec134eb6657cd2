"""Runs a whole yap-bus deployment on one machine: ``python -m launcher up``.

nats-server, the tool actor, the chat actor and the edge start one after another,
each in its own process group, and stop in reverse order. The tests use
:class:`NatsServer` on its own for a real bus per test.
"""

from launcher.errors import (
    AlreadyRunning,
    LauncherError,
    NatsServerError,
    ServiceExited,
    StartupTimeout,
)
from launcher.nats import NatsServer, find_nats_server
from launcher.process import ChildProcess
from launcher.supervisor import LaunchOptions, Supervisor

__all__ = [
    "AlreadyRunning",
    "ChildProcess",
    "LaunchOptions",
    "LauncherError",
    "NatsServer",
    "NatsServerError",
    "ServiceExited",
    "StartupTimeout",
    "Supervisor",
    "find_nats_server",
]
