"""How a CPU benchmark's ``main`` runs: on the project's event loop, the report
saved as JSON when asked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from bus.loop import loop_factory

__all__ = ["run_report"]

_R = TypeVar("_R")


def run_report(benchmark: Coroutine[Any, Any, _R], json_path: str | None) -> _R:
    """Run ``benchmark`` to its report; write it to ``json_path`` if given."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        report = runner.run(benchmark)
    if json_path:
        Path(json_path).write_text(
            json.dumps(msgspec.to_builtins(report), indent=1) + "\n", encoding="utf-8"
        )
    return report
