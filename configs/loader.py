"""Load a TOML deployment file and apply the seed's env var overrides.

Called from entrypoints only: ``environ`` is passed in, never read here.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import msgspec

from configs.schema import Config

__all__ = ["ENV_OVERRIDES", "ConfigError", "default_config_path", "load_config"]

# env var -> the config paths it sets. Names are the original server's, so existing
# deployment scripts keep working.
ENV_OVERRIDES: Final[Mapping[str, tuple[tuple[str, str], ...]]] = MappingProxyType(
    {
        "YAP_API_KEY": (("edge", "api_key"),),
        "MAX_CONCURRENT_CONNECTIONS": (("edge", "max_concurrent_connections"),),
        "STREAM_FLUSH_MS": (("edge", "stream_flush_ms"),),
        "SERVER_HISTORY_MAX_CHARS": (("edge", "server_history_max_chars"),),
        "YAP_EDGE_HOST": (("edge", "host"),),
        "YAP_EDGE_PORT": (("edge", "port"),),
        "YAP_CHAT_ROUTING": (("edge", "chat_routing"),),
        "YAP_ADMISSION_QUEUE": (("edge", "admission_queue"),),
        "YAP_ADMISSION_TIMEOUT_S": (("edge", "admission_timeout_s"),),
        "YAP_NATS_URL": (("bus", "url"),),
        # Comma-separated, as NATS tools take a server list.
        "YAP_NATS_SERVERS": (("bus", "servers"),),
        "YAP_BUS_USER": (("bus", "user"),),
        "YAP_BUS_PASSWORD": (("bus", "password"),),
        "DEPLOY_MODELS": (("models", "deploy"),),
        "CONCURRENT_MODEL_CALL": (("models", "concurrent_model_call"),),
        "CHAT_MODEL": (("chat", "model"),),
        "TOOL_MODEL": (("tool", "model"),),
        "CHAT_MAX_OUT": (("chat", "max_out"),),
        "HISTORY_MAX_TOKENS": (("chat", "history_max_tokens"),),
        "USER_UTT_MAX_TOKENS": (("chat", "user_utt_max_tokens"), ("tool", "user_utt_max_tokens")),
        "CHAT_GPU_FRAC": (("chat", "gpu_frac"),),
        "TOOL_GPU_FRAC": (("tool", "gpu_frac"),),
        "KV_DTYPE": (("chat", "kv_dtype"), ("tool", "kv_dtype")),
        "QUANTIZATION": (("chat", "quantization"), ("tool", "quantization")),
        "CHAT_MAX_LEN": (("chat", "max_len"),),
        # Set per replica by the launcher, so that replicas of a kind never collide.
        "TOOL_METRICS_PORT": (("actor", "tool_metrics_port"),),
        "CHAT_METRICS_PORT": (("actor", "chat_metrics_port"),),
        "YAP_LOG_LEVEL": (("log", "level"),),
        "YAP_LOG_FORMAT": (("log", "format"),),
        "YAP_RECORDING": (("recording", "enabled"),),
    }
)

_FLAGS: Final = {
    ("models", "concurrent_model_call"): "CONCURRENT_MODEL_CALL",
    ("recording", "enabled"): "YAP_RECORDING",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key or env var at fault."""


def default_config_path() -> Path:
    return Path(__file__).with_name("cpu.toml")


def load_config(path: str | Path | None = None, environ: Mapping[str, str] = {}) -> Config:
    """Decode ``path`` (default: the embedded CPU config), then apply env overrides.

    Raises:
        ConfigError: on unreadable TOML, an unknown key, a wrong type or a value
            a struct rejects; the message names the key (and the env var, if any).
    """
    path = Path(path) if path is not None else default_config_path()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc

    try:
        msgspec.convert(data, Config)  # the file alone, strictly: "8000" is not a port
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config {path}: {exc}") from exc

    # Env vars are strings by nature: convert each to its field's type, then check
    # the whole again so cross-field rules (__post_init__) see the final values.
    applied = [name for name in ENV_OVERRIDES if name in environ]
    for name, targets in ENV_OVERRIDES.items():
        if name not in environ:
            continue
        raw = environ[name]
        for section, key in targets:
            field_type = _field_type(section, key)
            try:
                value = msgspec.convert(_env_value(section, key, raw), field_type, strict=False)
            except msgspec.ValidationError as exc:
                raise ConfigError(
                    f"{name}={raw!r} is not valid at `$.{section}.{key}`: {exc}"
                ) from exc
            data.setdefault(section, {})[key] = msgspec.to_builtins(value)
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(
            f"invalid config {path}: {exc} (env overrides in effect: {', '.join(applied)})"
        ) from exc


def _field_type(section: str, key: str) -> Any:
    section_type = next(f.type for f in msgspec.structs.fields(Config) if f.name == section)
    return next(f.type for f in msgspec.structs.fields(section_type) if f.name == key)


def _env_value(section: str, key: str, raw: str) -> Any:
    """Turn an env string into what the field expects; msgspec checks the rest."""
    if (section, key) in _FLAGS:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{_FLAGS[section, key]} must be 0 or 1, got {raw!r}")
    if key in ("quantization",) and raw.strip().lower() in ("", "none", "auto"):
        return None
    if (section, key) == ("bus", "servers"):
        return [url.strip() for url in raw.split(",") if url.strip()]
    return raw.strip()
