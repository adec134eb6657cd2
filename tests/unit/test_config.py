"""Config loading: TOML defaults, env overrides, validation messages; reads files only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from configs import (
    Config,
    ConfigError,
    EdgeConfig,
    SamplingConfig,
    default_config_path,
    load_config,
)
from configs.loader import ENV_OVERRIDES

CONFIGS = Path(default_config_path()).parent
GPU_TOML = CONFIGS / "gpu.toml"

# A valid sample per env var, and the value it must land as in every target.
SAMPLES: dict[str, tuple[str, Any]] = {
    "YAP_API_KEY": ("s3cret", "s3cret"),
    "MAX_CONCURRENT_CONNECTIONS": ("50", 50),
    "STREAM_FLUSH_MS": ("12.5", 12.5),
    "SERVER_HISTORY_MAX_CHARS": ("8000", 8000),
    "YAP_EDGE_HOST": ("0.0.0.0", "0.0.0.0"),
    "YAP_EDGE_PORT": ("9001", 9001),
    "YAP_CHAT_ROUTING": ("queue", "queue"),
    "YAP_ADMISSION_QUEUE": ("16", 16),
    "YAP_ADMISSION_TIMEOUT_S": ("0.5", 0.5),
    "YAP_NATS_URL": ("nats://bus:4222", "nats://bus:4222"),
    "YAP_NATS_SERVERS": ("nats://a:4222, nats://b:4222", ("nats://a:4222", "nats://b:4222")),
    "YAP_BUS_USER": ("edge", "edge"),
    "YAP_BUS_PASSWORD": ("s3cret", "s3cret"),
    "DEPLOY_MODELS": ("chat", "chat"),
    "CONCURRENT_MODEL_CALL": ("1", True),
    "CHAT_MODEL": ("SicariusSicariiStuff/Impish_Nemo_12B", "SicariusSicariiStuff/Impish_Nemo_12B"),
    "TOOL_MODEL": ("MadeAgents/Hammer2.1-1.5b", "MadeAgents/Hammer2.1-1.5b"),
    "CHAT_MAX_OUT": ("150", 150),
    "HISTORY_MAX_TOKENS": ("2000", 2000),
    "USER_UTT_MAX_TOKENS": ("300", 300),
    "CHAT_GPU_FRAC": ("0.8", 0.8),
    "TOOL_GPU_FRAC": ("0.15", 0.15),
    "KV_DTYPE": ("fp8", "fp8"),
    "QUANTIZATION": ("awq", "awq"),
    "CHAT_MAX_LEN": ("4096", 4096),
    "TOOL_METRICS_PORT": ("9201", 9201),
    "CHAT_METRICS_PORT": ("9202", 9202),
    "YAP_LOG_LEVEL": ("DEBUG", "DEBUG"),
    "YAP_LOG_FORMAT": ("json", "json"),
    "YAP_RECORDING": ("on", True),
}


def flat(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf of a config as ``{(section, key, ...): value}``."""
    if isinstance(value, dict):
        out: dict[tuple[str, ...], Any] = {}
        for key, item in value.items():
            out.update(flat(item, (*prefix, key)))
        return out
    return {prefix: value}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def config_error(path: Path | None = None, **environ: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ)
    return str(info.value)


# --- the default file -----------------------------------------------------------------


def test_default_cpu_toml_loads() -> None:
    """The embedded cpu.toml loads into the documented defaults."""
    config = load_config()
    assert default_config_path().name == "cpu.toml"
    assert config.edge.port == 8000
    assert config.edge.api_key == "yap_token"
    assert config.models.deploy == "both"
    assert config.models.concurrent_model_call is False
    assert config.tool.max_out == 10
    assert config.chat.max_out == 200
    assert config.chat.history_max_tokens == 3000
    assert config.chat.user_utt_max_tokens == 350
    assert config.chat.sampling.temperature == 0.7
    assert config.tool.sampling == SamplingConfig()


def test_cpu_toml_matches_built_in_defaults() -> None:
    """Every cpu.toml value is also the built-in default except what it notes: the chat
    sampling and the actors' metrics ports (off by default, on for `just up`)."""
    config = load_config()
    assert (config.actor.tool_metrics_port, config.actor.chat_metrics_port) == (9101, 9102)
    chat = msgspec.structs.replace(config.chat, sampling=SamplingConfig())
    actor = msgspec.structs.replace(config.actor, tool_metrics_port=0, chat_metrics_port=0)
    assert msgspec.structs.replace(config, chat=chat, actor=actor) == Config()


def test_environment_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_config reads only the environ it is given, never os.environ."""
    monkeypatch.setenv("YAP_EDGE_PORT", "1234")
    monkeypatch.setenv("DEPLOY_MODELS", "tool")
    config = load_config()
    assert config.edge.port == 8000
    assert config.models.deploy == "both"


@pytest.mark.skipif(not GPU_TOML.exists(), reason="configs/gpu.toml is not there yet")
def test_gpu_toml_loads() -> None:
    """configs/gpu.toml loads, and its GPU fractions fit on one device."""
    config = load_config(GPU_TOML)
    assert config.models.concurrent_model_call is True  # measured faster at every load
    chat, tool = config.gpu_frac("chat"), config.gpu_frac("tool")
    assert 0 < chat <= 1 and 0 < tool <= 1
    if config.models.deploy == "both":
        assert chat + tool <= 1.0


# --- env overrides --------------------------------------------------------------------


def test_every_env_var_has_a_sample() -> None:
    """The sample table covers the override table exactly, so a new env var needs a test value."""
    assert set(SAMPLES) == set(ENV_OVERRIDES)


@pytest.mark.parametrize("name", sorted(ENV_OVERRIDES))
def test_env_override_lands_where_it_should(name: str) -> None:
    """Each env var sets exactly its target keys, converted to the field's type."""
    raw, expected = SAMPLES[name]
    base = flat(msgspec.to_builtins(load_config()))
    config = load_config(environ={name: raw})
    targets = ENV_OVERRIDES[name]
    for section, key in targets:
        value = getattr(getattr(config, section), key)
        assert value == expected
        assert type(value) is type(expected)
    changed = {
        path for path, value in flat(msgspec.to_builtins(config)).items() if base[path] != value
    }
    assert changed == set(targets)


def test_env_values_are_stripped() -> None:
    """Surrounding whitespace in env values is ignored."""
    config = load_config(environ={"YAP_EDGE_PORT": " 9001\n", "CHAT_MODEL": "  m  "})
    assert config.edge.port == 9001
    assert config.chat.model == "m"


def test_unrelated_env_vars_are_ignored() -> None:
    """Env vars outside the override table change nothing."""
    assert load_config(environ={"PATH": "/bin", "YAP_EDGE_PROT": "1"}) == load_config()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0", False),
        ("1", True),
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        (" 1 ", True),
        ("yes", True),
        ("off", False),
        ("", False),
    ],
)
def test_concurrent_model_call_values(raw: str, expected: bool) -> None:
    """CONCURRENT_MODEL_CALL takes 0/1 and true/false spellings."""
    config = load_config(environ={"CONCURRENT_MODEL_CALL": raw})
    assert config.models.concurrent_model_call is expected


@pytest.mark.parametrize("raw", ["2", "maybe", "enabled", "-1"])
def test_concurrent_model_call_rejects_other_values(raw: str) -> None:
    """Any other CONCURRENT_MODEL_CALL value fails, naming the env var and the value."""
    message = config_error(CONCURRENT_MODEL_CALL=raw)
    assert "CONCURRENT_MODEL_CALL" in message
    assert repr(raw) in message


@pytest.mark.parametrize("raw", ["none", "None", "auto", "", " "])
def test_quantization_none_values(raw: str) -> None:
    """QUANTIZATION of none, auto or empty means no explicit quantization for both actors."""
    config = load_config(environ={"QUANTIZATION": raw})
    assert config.chat.quantization is None
    assert config.tool.quantization is None


@pytest.mark.parametrize(
    ("name", "raw", "path"),
    [
        ("YAP_EDGE_PORT", "eighty", "$.edge.port"),
        ("MAX_CONCURRENT_CONNECTIONS", "many", "$.edge.max_concurrent_connections"),
        ("STREAM_FLUSH_MS", "fast", "$.edge.stream_flush_ms"),
        ("CHAT_MAX_OUT", "1.5", "$.chat.max_out"),
        ("CHAT_GPU_FRAC", "most", "$.chat.gpu_frac"),
        ("DEPLOY_MODELS", "all", "$.models.deploy"),
        ("KV_DTYPE", "fp16", ".kv_dtype"),
        ("YAP_LOG_FORMAT", "xml", "$.log.format"),
    ],
)
def test_wrong_type_via_env_names_key_and_var(name: str, raw: str, path: str) -> None:
    """A value of the wrong type fails with the key's path and the env var in the message."""
    message = config_error(**{name: raw})
    assert path in message
    assert name in message


def test_env_error_names_the_failing_var_only() -> None:
    """An env value of the wrong type is reported by its own name, not every known one."""
    message = config_error(YAP_EDGE_PORT="x", CHAT_MODEL="m")
    assert "YAP_EDGE_PORT" in message
    assert "TOOL_MODEL" not in message


def test_cross_field_error_lists_applied_vars() -> None:
    """A value a struct rejects names the env vars in effect, not every known one."""
    message = config_error(YAP_EDGE_PORT="70000", CHAT_MODEL="m")
    assert "YAP_EDGE_PORT" in message and "CHAT_MODEL" in message
    assert "TOOL_MODEL" not in message


def test_toml_values_are_strict(tmp_path) -> None:
    """A TOML string where a number belongs fails, though the same env string would not."""
    path = tmp_path / "c.toml"
    path.write_text('[edge]\nport = "8000"\n')
    with pytest.raises(ConfigError, match=r"\$\.edge\.port"):
        load_config(path, {})


# --- deploy-mode defaults -------------------------------------------------------------


@pytest.mark.parametrize(("deploy", "limit"), [("tool", 32), ("chat", 24), ("both", 16)])
def test_max_connections_by_deploy_mode(deploy: str, limit: int) -> None:
    """Without an explicit limit, max connections follow the deploy mode (32/24/16)."""
    config = load_config(environ={"DEPLOY_MODELS": deploy})
    assert config.max_connections == limit


@pytest.mark.parametrize("deploy", ["tool", "chat", "both"])
def test_explicit_max_connections_wins(deploy: str) -> None:
    """MAX_CONCURRENT_CONNECTIONS overrides the deploy-mode default."""
    config = load_config(environ={"DEPLOY_MODELS": deploy, "MAX_CONCURRENT_CONNECTIONS": "50"})
    assert config.max_connections == 50


def test_server_history_cap_follows_the_chat_budget() -> None:
    """By default the server-kept history's cap is 4 characters per chat history token,
    within max_history_chars; SERVER_HISTORY_MAX_CHARS sets it outright."""
    assert load_config().server_history_chars == 4 * 3000
    assert load_config(environ={"HISTORY_MAX_TOKENS": "500"}).server_history_chars == 2000
    capped = load_config(environ={"HISTORY_MAX_TOKENS": "100000"})
    assert capped.server_history_chars == capped.edge.max_history_chars
    explicit = load_config(environ={"SERVER_HISTORY_MAX_CHARS": "800"})
    assert explicit.server_history_chars == 800


@pytest.mark.parametrize("raw", ["-1", "256001"])
def test_server_history_cap_out_of_range(raw: str) -> None:
    """A cap below zero or above max_history_chars fails at start, naming the key."""
    with pytest.raises(ConfigError, match="server_history_max_chars"):
        load_config(environ={"SERVER_HISTORY_MAX_CHARS": raw})


@pytest.mark.parametrize(
    ("deploy", "chat", "tool"), [("both", 0.70, 0.20), ("chat", 0.90, 0.90), ("tool", 0.90, 0.90)]
)
def test_gpu_fractions_by_deploy_mode(deploy: str, chat: float, tool: float) -> None:
    """GPU fractions default to 0.70/0.20 when both run and 0.90 for a model alone."""
    config = load_config(environ={"DEPLOY_MODELS": deploy})
    assert config.gpu_frac("chat") == pytest.approx(chat)
    assert config.gpu_frac("tool") == pytest.approx(tool)


def test_explicit_gpu_fractions_win() -> None:
    """CHAT_GPU_FRAC and TOOL_GPU_FRAC override the deploy-mode fractions."""
    config = load_config(environ={"CHAT_GPU_FRAC": "0.8", "TOOL_GPU_FRAC": "0.15"})
    assert config.gpu_frac("chat") == pytest.approx(0.8)
    assert config.gpu_frac("tool") == pytest.approx(0.15)


@pytest.mark.parametrize(
    ("deploy", "chat", "tool"), [("both", True, True), ("chat", True, False), ("tool", False, True)]
)
def test_models_deployed(deploy: str, chat: bool, tool: bool) -> None:
    """The deploy mode says which actors run."""
    models = load_config(environ={"DEPLOY_MODELS": deploy}).models
    assert (models.chat, models.tool) == (chat, tool)


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize("port", ["-1", "65536", "70000"])
def test_invalid_edge_port_rejected(port: str) -> None:
    """An edge port outside 0..65535 is rejected with the key named."""
    message = config_error(YAP_EDGE_PORT=port)
    assert "edge.port" in message
    assert "YAP_EDGE_PORT" in message


@pytest.mark.parametrize("port", ["0", "65535"])
def test_edge_port_bounds_accepted(port: str) -> None:
    """Ports 0 (pick a free one) and 65535 are valid."""
    assert load_config(environ={"YAP_EDGE_PORT": port}).edge.port == int(port)


@pytest.mark.parametrize("key", ["", "   "])
def test_empty_api_key_rejected(key: str) -> None:
    """An empty (or blank) API key from the env is rejected."""
    assert "edge.api_key" in config_error(YAP_API_KEY=key)


def test_empty_api_key_in_toml_rejected(tmp_path: Path) -> None:
    """An empty API key in the TOML file is rejected."""
    assert "edge.api_key" in config_error(write(tmp_path, '[edge]\napi_key = ""\n'))


def test_small_frame_limit_rejected(tmp_path: Path) -> None:
    """A max frame size under 1 KiB is rejected."""
    assert "max_frame_bytes" in config_error(write(tmp_path, "[edge]\nmax_frame_bytes = 100\n"))


def test_edge_config_validates_itself() -> None:
    """EdgeConfig checks its values when built directly too."""
    with pytest.raises(ValueError, match=r"edge\.port"):
        EdgeConfig(port=70000)
    with pytest.raises(ValueError, match=r"edge\.api_key"):
        EdgeConfig(api_key="")


@pytest.mark.parametrize(
    ("text", "field", "where"),
    [
        ("[edge]\nprot = 8000\n", "prot", "$.edge"),
        ("[edgee]\nport = 8000\n", "edgee", "unknown field"),
        ("[chat.sampling]\ntemp = 0.5\n", "temp", "$.chat.sampling"),
        ("[models]\nconcurrent = true\n", "concurrent", "$.models"),
        ("deploy = 'both'\n", "deploy", "unknown field"),
    ],
)
def test_unknown_toml_key_names_its_path(tmp_path: Path, text: str, field: str, where: str) -> None:
    """A typo in the TOML file fails, naming the unknown key and where it is."""
    message = config_error(write(tmp_path, text))
    assert f"`{field}`" in message
    assert where in message


def test_wrong_type_in_toml_names_its_path(tmp_path: Path) -> None:
    """A TOML value of the wrong type fails with the key's path and no env hint."""
    message = config_error(write(tmp_path, '[edge]\nport = "eighty"\n'))
    assert "$.edge.port" in message
    assert "env overrides" not in message


def test_partial_toml_uses_defaults(tmp_path: Path) -> None:
    """A file with one section leaves every other key at its default."""
    config = load_config(write(tmp_path, "[edge]\nport = 9100\n"))
    assert config.edge.port == 9100
    assert msgspec.structs.replace(config, edge=EdgeConfig()) == Config()


def test_env_override_creates_missing_section(tmp_path: Path) -> None:
    """An env var whose section is absent from the file still applies."""
    config = load_config(write(tmp_path, ""), {"YAP_LOG_LEVEL": "DEBUG"})
    assert config.log.level == "DEBUG"


def test_malformed_toml_is_a_config_error(tmp_path: Path) -> None:
    """Unparseable TOML fails with ConfigError naming the file."""
    path = write(tmp_path, "[edge\nport = 1\n")
    message = config_error(path)
    assert "cannot read config" in message and str(path) in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist fails with ConfigError, not OSError."""
    assert "cannot read config" in config_error(tmp_path / "absent.toml")


def test_config_error_is_a_value_error() -> None:
    """Entrypoints catching ValueError also catch a bad config."""
    assert issubclass(ConfigError, ValueError)
