"""One supervised child process: its own session, dies with the launcher, bounded stop.

Each child runs in a new session (so a process group of its own): a Ctrl-C in the
terminal reaches only the launcher, which then stops the children in the order it
chooses. On Linux each child also asks the kernel for SIGKILL when the launcher dies
(``PR_SET_PDEATHSIG``), so even a SIGKILLed launcher leaves no orphans behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from launcher.errors import describe_exit

__all__ = ["ChildProcess", "die_with_parent", "kill_group"]

_PR_SET_PDEATHSIG: Final = 1

# What may be given as a child's stdout or stderr: inherit (None), a file, a fd, PIPE.
Redirect = int | IO[bytes] | None


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies.

    Returns None where the kernel has no such feature (anything but Linux). The
    signal is sent when the *thread* that forked exits, so spawn from the thread
    that runs the event loop for the launcher's lifetime (asyncio does).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Looked up here, in the parent: the child should do as little as possible.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(
            ctypes.c_int(_PR_SET_PDEATHSIG),
            ctypes.c_ulong(signal.SIGKILL),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
        # The parent may have died between fork and prctl; then no signal would come.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to a whole process group; False if the group is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Can happen briefly while the group leader is a zombie on some kernels.
        return False
    return True


class ChildProcess:
    """A child in its own session that is stopped with SIGTERM, then SIGKILL.

    Use as an async context manager (start on enter, stop on exit) or call
    :meth:`start` and :meth:`stop`. Stopping also kills whatever the child left
    behind in its process group.

    Args:
        name: what log lines call it ("tool actor").
        argv: the command line.
        env: the whole environment of the child; None inherits the launcher's.
        cwd: the working directory; None inherits the launcher's.
        stdout, stderr: None inherits, or a file, fd, or ``asyncio.subprocess.PIPE``.
        stop_timeout_s: how long SIGTERM is given before SIGKILL.
        logger: where lifecycle lines go.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stdout: Redirect = None,
        stderr: Redirect = None,
        stop_timeout_s: float = 10.0,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.name = name
        self._argv = tuple(argv)
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._stdout = stdout
        self._stderr = stderr
        self._stop_timeout_s = stop_timeout_s
        self._log = logger or logging.getLogger("launcher")
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """None while running (or before start), else the exit status."""
        return self._proc.returncode if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        """The child's stdout when it was started with ``stdout=PIPE``."""
        return self._proc.stdout if self._proc is not None else None

    async def start(self) -> None:
        """Spawn the child; returns as soon as it is forked, not when it is ready."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv,
            env=self._env,
            cwd=self._cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )

    async def wait(self) -> int:
        """Wait for the child to exit and return its status."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return await self._proc.wait()

    async def stop(self) -> int | None:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL; None if never started.

        Safe to call twice and after the child exited on its own. Whatever is left
        in the child's process group afterwards is killed.
        """
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.returncode is None:
                code = await self._terminate(proc)
                self._log.info("%s exited (%s)", self.name, describe_exit(code))
            else:
                code = proc.returncode
        finally:
            # Also when cancelled mid-stop: never leave anything of the child behind.
            kill_group(proc.pid)
        return code

    async def kill(self) -> int | None:
        """SIGKILL the child's whole process group and reap it; None if never started."""
        proc = self._proc
        if proc is None:
            return None
        kill_group(proc.pid)
        return await proc.wait()

    async def _terminate(self, proc: asyncio.subprocess.Process) -> int:
        self._log.info("stopping %s (pid %d)", self.name, proc.pid)
        # SIGTERM to the leader only, so it can shut its own children down in order.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                return await proc.wait()
        except TimeoutError:
            self._log.warning(
                "%s did not stop within %.0f s; killing it", self.name, self._stop_timeout_s
            )
            kill_group(proc.pid)
            return await proc.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
