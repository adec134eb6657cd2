"""Inference engines behind one interface, chosen by a factory from config."""

from actors.engines.base import (
    Engine,
    EngineDeadError,
    EngineError,
    EngineOutput,
    EngineRequestError,
    FinishReason,
    SamplingSpec,
    Tokenizer,
)
from actors.engines.factory import build_engine

__all__ = [
    "Engine",
    "EngineDeadError",
    "EngineError",
    "EngineOutput",
    "EngineRequestError",
    "FinishReason",
    "SamplingSpec",
    "Tokenizer",
    "build_engine",
]
