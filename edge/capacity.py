"""How many client connections this host's edges hold, against one limit.

``MAX_CONCURRENT_CONNECTIONS`` is a limit for the whole host, however many edge
processes share the port (``edge.processes``): N edges together admit at most that
many connections, not N times it, and none of them has to guess its share.

One edge process counts in memory (:class:`LocalSlots`). N of them count with a
file of ``limit`` one-byte slots (:class:`SharedSlots`): a connection holds an
exclusive POSIX record lock on one byte for its lifetime. The kernel drops a
process's locks when it dies, however it dies, so a crashed edge never leaks
capacity; and since taking a lock is atomic, two edges never admit the same slot.
The host-wide count for ``/status`` comes from ``/proc/locks`` (read-only, so it
never disturbs an edge that is taking a slot at that moment).

POSIX record locks belong to the process, not the descriptor: an edge opens the
file once, keeps it open, and tracks its own slots in memory (its locks never
conflict with each other). Two edges in one process would therefore share one
count; an edge is a process of its own everywhere but in tests that say so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Final, Protocol

__all__ = ["ConnectionSlots", "LocalSlots", "SharedSlots", "Slot", "open_slots"]

_PROC_LOCKS: Final = Path("/proc/locks")


class Slot(Protocol):
    def release(self) -> None:
        """Give the slot back; a second call does nothing."""


class ConnectionSlots(Protocol):
    limit: int

    def acquire(self) -> Slot | None:
        """A slot for a new connection, or None when the host is at the limit."""

    def active(self) -> int:
        """Connections held host-wide (by every edge sharing the limit)."""

    def close(self) -> None: ...


class _LocalSlot:
    def __init__(self, slots: LocalSlots) -> None:
        self._slots: LocalSlots | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.held -= 1
            self._slots = None


class LocalSlots:
    """The limit of one edge process, counted in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def acquire(self) -> Slot | None:
        if self.held >= self.limit:
            return None
        self.held += 1
        return _LocalSlot(self)

    def active(self) -> int:
        return self.held

    def close(self) -> None:
        return None


class _SharedSlot:
    def __init__(self, slots: SharedSlots, index: int) -> None:
        self._slots: SharedSlots | None = slots
        self.index = index

    def release(self) -> None:
        if self._slots is not None:
            self._slots._release(self.index)
            self._slots = None


class SharedSlots:
    """The limit of every edge process that uses ``path``, counted with record locks.

    Args:
        path: the slot file (made, with its directory, if missing); every edge of
            the host must name the same one.
        limit: the host-wide connection limit, one byte of the file per slot.
    """

    def __init__(self, path: str | Path, limit: int) -> None:
        self.limit = limit
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        stat = os.fstat(self._fd)
        # How /proc/locks names the file: "<major>:<minor>:<inode>", major and minor hex.
        self._proc_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
        self._mine: set[int] = set()
        self._next = os.getpid() % max(limit, 1)  # edges start their search apart

    def acquire(self) -> Slot | None:
        for step in range(self.limit):
            index = (self._next + step) % self.limit
            if index in self._mine:
                continue
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, index)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    continue  # another edge holds it
                raise
            self._mine.add(index)
            self._next = (index + 1) % self.limit
            return _SharedSlot(self, index)
        return None

    def _release(self, index: int) -> None:
        self._mine.discard(index)
        with contextlib.suppress(OSError):  # closed at shutdown: the lock is gone anyway
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, index)

    def active(self) -> int:
        try:
            text = _PROC_LOCKS.read_text()
        except OSError:
            return len(self._mine)  # not Linux, or hidden: what this edge knows
        held = 0
        for line in text.splitlines():
            fields = line.split()
            # "1: POSIX  ADVISORY  WRITE 4242 fd:00:1234 3 4"; blocked waiters have "->".
            if len(fields) < 8 or fields[1] == "->" or fields[5] != self._proc_id:
                continue
            start, end = int(fields[6]), fields[7]
            last = self.limit - 1 if end == "EOF" else min(int(end), self.limit - 1)
            held += max(0, last - start + 1)  # adjacent locks of a process merge
        # Our own are certainly held, whatever /proc/locks could be matched against.
        return min(self.limit, max(held, len(self._mine)))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # drops every lock this process holds on the file
            self._fd = -1
            self._mine.clear()


def open_slots(limit: int, *, processes: int, path: str) -> ConnectionSlots:
    """The counter for ``processes`` edges on this host: shared above one."""
    if processes > 1:
        return SharedSlots(path, limit)
    return LocalSlots(limit)
