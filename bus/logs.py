"""Logging for every process: readable on a terminal, JSON lines elsewhere.

Per-turn adapters carry ``session_id`` and ``turn_id`` in ``extra``; both formats
print them, so one grep follows a turn through the edge and the actors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

__all__ = ["setup_logging"]

_CONTEXT_KEYS = ("process_name", "conn_id", "session_id", "turn_id", "actor_id")


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        context = " ".join(
            f"{k}={getattr(record, k)}" for k in _CONTEXT_KEYS[1:] if hasattr(record, k)
        )
        name = getattr(record, "process_name", record.name)
        level = record.levelname
        line = f"{stamp}.{int(record.msecs):03d} {level:<5} {name:<5} {record.getMessage()}"
        if context:
            line = f"{line}  [{context}]"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _CONTEXT_KEYS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _ProcessName(logging.Filter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "process_name"):
            record.process_name = self._name
        return True


def setup_logging(
    level: str, fmt: Literal["auto", "text", "json"], process_name: str
) -> logging.Logger:
    """Configure the root logger once, in an entrypoint; returns the process's logger."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if use_json else _TextFormatter())
    handler.addFilter(_ProcessName(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py and websockets are chatty at INFO about things we log ourselves.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("nats").setLevel(logging.WARNING)
    return logging.getLogger(f"yap.{process_name}")
