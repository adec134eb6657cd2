"""The launcher's run directory (``.yap/run``): its pid file and its detached log.

The pid file lets ``just down`` find a launcher started in another terminal or in
the background; a file left by a launcher that died is recognised and replaced.
"""

from __future__ import annotations

import os
import select
import time
from collections import deque
from pathlib import Path
from typing import Final

from launcher.errors import AlreadyRunning

__all__ = ["RunDir", "launcher_alive", "wait_exit"]

_PID_NAME: Final = "launcher.pid"
_LOG_NAME: Final = "up.log"
_POLL_S: Final = 0.05


class RunDir:
    """Paths and pid-file handling under one directory (created on demand)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()

    @property
    def pid_path(self) -> Path:
        return self.path / _PID_NAME

    @property
    def log_path(self) -> Path:
        """Where a detached launcher writes its own and its children's output."""
        return self.path / _LOG_NAME

    def read_pid(self) -> int | None:
        """The pid in the pid file, alive or not; None if there is no readable file."""
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def live_pid(self) -> int | None:
        """The pid of the launcher that owns this directory, None if none is alive."""
        pid = self.read_pid()
        return pid if pid is not None and launcher_alive(pid) else None

    def claim(self, pid: int) -> None:
        """Write ``pid`` to the pid file, replacing a stale one.

        Raises:
            AlreadyRunning: a live launcher holds the file.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                # O_EXCL: two launchers starting at once cannot both win.
                fd = os.open(self.pid_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.live_pid()
                if holder is not None and holder != pid:
                    raise AlreadyRunning(holder) from None
                self.pid_path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as file:
                file.write(f"{pid}\n")
            return
        raise AlreadyRunning(self.read_pid() or -1)

    def release(self, pid: int) -> None:
        """Remove the pid file if it still names ``pid``."""
        if self.read_pid() == pid:
            self.pid_path.unlink(missing_ok=True)
            # The bus credentials of a run die with it, and so does its state.
            for name in ("bus.json", "replay.json", "services.json", "config.toml"):
                (self.path / name).unlink(missing_ok=True)

    def remove_pid_file(self) -> None:
        self.pid_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with self.log_path.open("rb") as log:
                tail = deque(log, maxlen=lines)
        except OSError:
            return ""
        return b"".join(tail).decode("utf-8", "replace")


def launcher_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process that looks like a launcher.

    The command-line check guards against a stale pid file whose pid now belongs
    to something else.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's; not ours to judge further
    proc = Path("/proc") / str(pid)
    if not proc.is_dir():
        return True  # no procfs: trust the signal check
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may contain spaces.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and b"launcher" in cmdline


def wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``pid`` (not our child) to exit; True if it did."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):
        return _poll_exit(pid, timeout_s)
    try:
        # A pidfd becomes readable when the process terminates.
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
    finally:
        os.close(pidfd)
    return bool(readable)


def _poll_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while launcher_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True
