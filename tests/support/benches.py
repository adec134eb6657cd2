"""Runs a benchmark's command line the way a user does, for the benchmarks' smoke tests."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

__all__ = ["run_module"]

ROOT = Path(__file__).resolve().parents[2]


async def run_module(module: str, *args: str) -> str:
    """``python -m module args`` from the repository root; its output (stdout and
    stderr), asserting that it exited 0 (the output's tail says why not)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text
