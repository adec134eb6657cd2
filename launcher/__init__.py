"""Runs a whole yap-bus deployment on one machine: ``python -m launcher up``.

As a library, :class:`Launcher` starts nats-server (or a cluster), the actor
replicas one after the other and the edge processes, waits until all are ready,
restarts what crashes and stops everything in reverse order; ``just up``, the
end-to-end tests and the benchmarks use it. The tests also use :class:`NatsServer`
on its own for a real bus per test.
"""

from launcher.errors import (
    AlreadyRunning,
    LauncherError,
    NatsServerError,
    ServiceExited,
    StartupTimeout,
)
from launcher.nats import ClusterSpec, NatsServer, find_nats_server
from launcher.plan import Plan, PlanError, make_plan
from launcher.preflight import PortInUse
from launcher.process import ChildProcess
from launcher.services import Host, ServiceStatus
from launcher.supervisor import Launcher, LaunchOptions, Supervisor

__all__ = [
    "AlreadyRunning",
    "ChildProcess",
    "ClusterSpec",
    "Host",
    "LaunchOptions",
    "Launcher",
    "LauncherError",
    "NatsServer",
    "NatsServerError",
    "Plan",
    "PlanError",
    "PortInUse",
    "ServiceExited",
    "ServiceStatus",
    "StartupTimeout",
    "Supervisor",
    "find_nats_server",
    "make_plan",
]
