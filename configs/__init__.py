"""Deployment configuration: TOML files decoded into Structs, env vars as overrides."""

from configs.loader import ConfigError, default_config_path, load_config
from configs.schema import (
    ActorConfig,
    BusConfig,
    ChatConfig,
    Config,
    EdgeConfig,
    EngineConfig,
    LauncherConfig,
    LogConfig,
    ModelsConfig,
    NatsServerConfig,
    SamplingConfig,
    ToolConfig,
)

__all__ = [
    "ActorConfig",
    "BusConfig",
    "ChatConfig",
    "Config",
    "ConfigError",
    "EdgeConfig",
    "EngineConfig",
    "LauncherConfig",
    "LogConfig",
    "ModelsConfig",
    "NatsServerConfig",
    "SamplingConfig",
    "ToolConfig",
    "default_config_path",
    "load_config",
]
