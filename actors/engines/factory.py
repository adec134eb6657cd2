"""Pick an engine implementation from config; heavy imports happen only when chosen."""

from __future__ import annotations

from typing import Literal

from actors.engines.base import Engine
from configs.schema import Config

__all__ = ["build_engine"]


def build_engine(config: Config, kind: Literal["tool", "chat"]) -> Engine:
    engine_config = config.chat if kind == "chat" else config.tool
    backend = engine_config.backend
    if backend == "transformers":
        from actors.engines.transformers_engine import TransformersEngine

        return TransformersEngine(engine_config)
    if backend == "vllm":
        from actors.engines.vllm_engine import VllmEngine

        return VllmEngine(engine_config, gpu_frac=config.gpu_frac(kind))
    if backend == "fake":
        from actors.engines.fake import FakeEngine

        return FakeEngine(engine_config)
    if backend == "bench":
        from actors.engines.bench import BenchEngine

        return BenchEngine(engine_config)
    raise ValueError(f"unknown engine backend {backend!r}")
