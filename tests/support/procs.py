"""Linux process inspection through /proc, to assert that nothing is left running."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

__all__ = ["ProcessId", "alive", "descendants", "process_id", "until_gone"]

# A pid and its start time: together they name one process even if the pid is reused.
ProcessId = tuple[int, int]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name, which may contain spaces: state first.
    return stat.rsplit(")", 1)[-1].split()


def process_id(pid: int) -> ProcessId | None:
    """The identity of a live (not zombie) process, None if there is none."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return pid, int(fields[19])  # starttime is field 22 of stat, 20th after the name


def descendants(pid: int) -> set[ProcessId]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[ProcessId] = set()
    todo = list(parents.get(pid, ()))
    while todo:
        child = todo.pop()
        identity = process_id(child)
        if identity is not None:
            found.add(identity)
        todo.extend(parents.get(child, ()))
    return found


def alive(processes: set[ProcessId]) -> set[ProcessId]:
    """Those of ``processes`` that are still running (zombies count as gone)."""
    return {p for p in processes if process_id(p[0]) == p}


async def until_gone(processes: set[ProcessId], timeout_s: float = 10.0) -> set[ProcessId]:
    """Wait until none of ``processes`` runs; return those still running at the deadline."""
    # Processes not our children cannot be awaited; polling /proc is all there is.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        left = alive(processes)
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(0.02)
