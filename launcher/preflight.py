"""Check every port before anything starts, so that a taken port fails in a second.

Without this, ``just up`` started nats-server and both actors (seconds to minutes of
model loading) before the child that could not bind died with a traceback. Here
each port of the plan is bound once and released; a port in use is reported in one
line with what holds it (from ``/proc``, when this user may see it) and the setting
that moves it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from launcher.errors import LauncherError
from launcher.plan import PortClaim

__all__ = ["PortInUse", "check_ports", "port_holder"]

_LISTEN: Final = "0A"  # TCP state LISTEN in /proc/net/tcp


class PortInUse(LauncherError):
    """A port the deployment needs is taken; the message is the whole explanation."""

    def __init__(self, claim: PortClaim, holder: str | None) -> None:
        held = f" by {holder}" if holder else ""
        super().__init__(
            f"port {claim.port} on {claim.host} ({claim.what}) is already in use{held}; "
            f"stop that or move it with {claim.setting}"
        )
        self.claim = claim
        self.holder = holder


def check_ports(claims: Iterable[PortClaim]) -> None:
    """Raise :class:`PortInUse` for the first port of ``claims`` that cannot be bound.

    Two claims of one port (two settings that collide) are reported too.
    """
    seen: dict[tuple[str, int], PortClaim] = {}
    for claim in claims:
        key = (claim.host, claim.port)
        if key in seen:
            raise PortInUse(claim, f"this deployment's own {seen[key].what}")
        seen[key] = claim
        if not _bindable(claim.host, claim.port):
            raise PortInUse(claim, port_holder(claim.port))


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: a port in TIME_WAIT is free for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str | None:
    """``pid 123 (nats-server)`` for the process listening on ``port``, if visible."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    proc = Path("/proc")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        return f"pid {entry.name} ({_command(entry)})"
    return "another process"


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes of TCP listeners on ``port`` in this network namespace."""
    wanted = f"{port:04X}"
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                listening = len(fields) > 9 and fields[3] == _LISTEN
                if listening and fields[1].rsplit(":", 1)[-1] == wanted:
                    inodes.add(fields[9])
    return inodes


def _command(proc_dir: Path) -> str:
    try:
        argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    # One line, short: the message must stay a single readable line.
    text = " ".join(" ".join(a.decode(errors="replace") for a in argv if a).split())
    return (text[:77] + "...") if len(text) > 80 else (text or "?")
