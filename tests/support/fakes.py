"""Stand-ins for the actors and the edge, to test the launcher without models.

``python -m tests.support.fake_actor KIND`` and ``python -m tests.support.fake_edge``
take ``--config`` like the real entrypoints and read the same env overrides. Env
vars steer them (they are entrypoints, so they may read the environment):

- ``YAP_FAKE_EVENTS``: a file to which each appends ``start NAME`` and ``stop NAME``.
- ``YAP_FAKE_CRASH``: a name (``tool``, ``chat``, ``edge``) that exits with code 3
  right after it is ready.
- ``YAP_FAKE_HANG``: a name that ignores SIGTERM (so it must be SIGKILLed).
- ``YAP_FAKE_SILENT``: an actor kind that never says it is ready.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = [
    "ACTORS_MODULE",
    "CRASH_CODE",
    "EDGE_MODULE",
    "REPO_ROOT",
    "FakeBehaviour",
    "fake_env",
    "read_events",
]

CRASH_CODE: Final = 3
ACTORS_MODULE: Final = "tests.support.fake_actor"
EDGE_MODULE: Final = "tests.support.fake_edge"
REPO_ROOT: Final = Path(__file__).resolve().parents[2]


def fake_env(base: Mapping[str, str], events: Path, **extra: str) -> dict[str, str]:
    """``base`` plus what fake services need: the repo on PYTHONPATH, an events file."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": path, "YAP_FAKE_EVENTS": str(events), **extra}


def read_events(events: Path) -> list[str]:
    """The ``start NAME`` / ``stop NAME`` lines recorded so far, in order."""
    try:
        return events.read_text().splitlines()
    except FileNotFoundError:
        return []


class FakeBehaviour:
    """What the environment asks one fake service to do."""

    def __init__(self, name: str, environ: dict[str, str]) -> None:
        self.name = name
        self._events = environ.get("YAP_FAKE_EVENTS")
        self.crash = environ.get("YAP_FAKE_CRASH") == name
        self.hang = environ.get("YAP_FAKE_HANG") == name
        self.silent = environ.get("YAP_FAKE_SILENT") == name

    def record(self, what: str) -> None:
        if self._events:
            # One short O_APPEND write per line: lines from processes never interleave.
            with Path(self._events).open("a") as events:
                events.write(f"{what} {self.name}\n")

    def ignore_sigterm_if_asked(self) -> bool:
        if self.hang:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return self.hang
