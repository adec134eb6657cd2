"""CPU time per process and for the whole machine, from /proc."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["cpu_model", "cpu_percent", "cpu_snapshot", "machine_ticks", "proc_ticks"]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``; "unknown" where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def proc_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (all its threads), None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) clock ticks of all CPUs since boot, from ``/proc/stat``.

    Steal is time a vCPU had work but the hypervisor ran someone else: not busy.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle, steal = values[3] + values[4], values[7]
    total = sum(values)
    return total - idle - steal, steal, total


def cpu_snapshot(
    pids: Mapping[str, int],
) -> tuple[dict[str, int | None], tuple[int, int, int]]:
    return {name: proc_ticks(pid) for name, pid in pids.items()}, machine_ticks()


def cpu_percent(
    before: tuple[dict[str, int | None], tuple[int, int, int]],
    after: tuple[dict[str, int | None], tuple[int, int, int]],
    wall_s: float,
) -> dict[str, float]:
    """Percent of one core per process, ``machine`` (up to 100 x cores), ``foreign``
    (busy, not ours) and ``steal`` (taken by the hypervisor)."""
    tick = os.sysconf("SC_CLK_TCK")
    result: dict[str, float] = {}
    for name, start in before[0].items():
        end = after[0].get(name)
        if start is not None and end is not None and wall_s > 0:
            result[name] = round(100.0 * (end - start) / tick / wall_s, 1)
    busy = after[1][0] - before[1][0]
    steal = after[1][1] - before[1][1]
    total = after[1][2] - before[1][2]
    cores = os.cpu_count() or 1
    if total > 0:
        result["machine"] = round(100.0 * cores * busy / total, 1)
        result["steal"] = round(100.0 * cores * steal / total, 1)
        ours = sum(v for k, v in result.items() if k not in ("machine", "steal"))
        result["foreign"] = round(max(result["machine"] - ours, 0.0), 1)
    return result
