"""Stand-ins for the actors and the edge, to test the launcher without models.

``python -m tests.support.fake_actor KIND`` and ``python -m tests.support.fake_edge``
take ``--config`` like the real entrypoints and read the same env overrides. Env
vars steer them (they are entrypoints, so they may read the environment):

- ``YAP_FAKE_EVENTS``: a file to which each appends ``start NAME`` and ``stop NAME``;
  NAME is the slot the launcher gave it (``chat-1``, from ``YAP_ACTOR_ID`` or
  ``YAP_EDGE_ID``), else its kind.
- ``YAP_FAKE_CRASH``: a kind or slot (``tool``, ``chat-1``, ``edge``) that exits with
  code 3 right after it is ready, every time it runs.
- ``YAP_FAKE_HANG``: a kind or slot that ignores SIGTERM (so it must be SIGKILLed).
- ``YAP_FAKE_SILENT``: a kind or slot that never says it is ready.
- ``YAP_FAKE_RUNS``: what a slot does on its n-th run, e.g.
  ``chat-0=crash,die,ready``: ``ready`` serves, ``crash`` exits 3 once ready,
  ``die`` exits 3 before it is ready, ``silent`` never gets ready; runs past the
  list serve. The run count is read from the events file.
"""

from __future__ import annotations

import json
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
    "env_path",
    "fake_env",
    "read_env",
    "read_events",
]

CRASH_CODE: Final = 3
ACTORS_MODULE: Final = "tests.support.fake_actor"
EDGE_MODULE: Final = "tests.support.fake_edge"
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
# The per-slot variables the launcher sets, as the fakes report them.
_SLOT_ENV: Final = ("YAP_ACTOR_ID", "YAP_EDGE_ID", "YAP_BUS_", "CUDA_", "CHAT_", "TOOL_")


def fake_env(base: Mapping[str, str], events: Path, **extra: str) -> dict[str, str]:
    """``base`` plus what fake services need: the repo on PYTHONPATH, an events file."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": path, "YAP_FAKE_EVENTS": str(events), **extra}


def env_path(events: Path, name: str) -> Path:
    return events.with_name(f"{events.name}.{name}.env.json")


def read_env(events: Path, name: str) -> dict[str, str]:
    """The slot-specific environment the fake ``name`` last started with."""
    return dict(json.loads(env_path(events, name).read_text()))


def read_events(events: Path) -> list[str]:
    """The ``start NAME`` / ``stop NAME`` lines recorded so far, in order."""
    try:
        return events.read_text().splitlines()
    except FileNotFoundError:
        return []


class FakeBehaviour:
    """What the environment asks one fake service to do on this run."""

    def __init__(self, kind: str, environ: dict[str, str]) -> None:
        slot = environ.get("YAP_ACTOR_ID") if kind != "edge" else environ.get("YAP_EDGE_ID")
        self.name = slot or kind
        names = {kind, self.name}
        self._events = environ.get("YAP_FAKE_EVENTS")
        self.crash = environ.get("YAP_FAKE_CRASH") in names
        self.hang = environ.get("YAP_FAKE_HANG") in names
        self.silent = environ.get("YAP_FAKE_SILENT") in names
        self.die = False
        run = read_events(Path(self._events)).count(f"start {self.name}") if self._events else 0
        for entry in environ.get("YAP_FAKE_RUNS", "").split(";"):
            target, _, plan = entry.partition("=")
            steps = [s.strip() for s in plan.split(",") if s.strip()]
            if target.strip() in names and run < len(steps):
                step = steps[run]
                self.crash = self.crash or step == "crash"
                self.die = step == "die"
                self.silent = self.silent or step == "silent"

    def record(self, what: str) -> None:
        if self._events:
            # One short O_APPEND write per line: lines from processes never interleave.
            with Path(self._events).open("a") as events:
                events.write(f"{what} {self.name}\n")

    def record_env(self, environ: dict[str, str], config: str | None = None) -> None:
        """Save what the launcher set for this slot, for :func:`read_env`, and the
        config file it was told to read (as ``--config``)."""
        if self._events:
            picked = {k: v for k, v in environ.items() if k.startswith(_SLOT_ENV)}
            if config is not None:
                picked["--config"] = config
            env_path(Path(self._events), self.name).write_text(json.dumps(picked))

    def ignore_sigterm_if_asked(self) -> bool:
        if self.hang:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return self.hang
