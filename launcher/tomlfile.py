"""Write a config back to TOML, so children read exactly what the launcher decided.

The launcher applies the env overrides and its own flags (``--replicas``,
``--cluster``, ports) to the config, then writes the result for its children:
every process of a run reads one file, and tests and benchmarks describe a
deployment as a :class:`~configs.schema.Config` instead of writing TOML by hand.
Only what a Config holds is supported: tables, strings, numbers, booleans, lists.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from configs.schema import Config

__all__ = ["dumps", "write_config"]


def write_config(path: Path, config: Config) -> Path:
    """Write ``config`` to ``path``, readable by this user only (it holds the API key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(dumps(msgspec.to_builtins(config)))
    return path


def dumps(data: Mapping[str, Any]) -> str:
    """TOML text for nested mappings; None values are left out (they mean the default)."""
    lines: list[str] = []
    _table(lines, (), data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(lines: list[str], path: tuple[str, ...], data: Mapping[str, Any]) -> None:
    scalars = {k: v for k, v in data.items() if v is not None and not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if path and (scalars or not tables):
        lines.append("")
        lines.append(f"[{'.'.join(_key(p) for p in path)}]")
    lines.extend(f"{_key(key)} = {_value(value)}" for key, value in scalars.items())
    for key, table in tables.items():
        _table(lines, (*path, key), table)


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML forbids a raw DEL and surrogates
    # (ensure_ascii would write astral characters as surrogate pairs).
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
