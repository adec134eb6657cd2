"""The shape of a deployment's configuration.

Every struct forbids unknown fields so that a typo in a TOML file fails at start
with the key's path instead of being silently ignored.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "ActorConfig",
    "BusConfig",
    "ChatConfig",
    "Config",
    "DeployModels",
    "EdgeConfig",
    "EngineBackend",
    "EngineConfig",
    "LogConfig",
    "ModelsConfig",
    "NatsServerConfig",
    "RecordingConfig",
    "SamplingConfig",
    "ToolConfig",
]

DeployModels = Literal["both", "chat", "tool"]
EngineBackend = Literal["transformers", "vllm", "fake", "bench"]


class _Base(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


class EdgeConfig(_Base):
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = "yap_token"
    # 0 means "by deploy mode": 32 tool-only, 24 chat-only, 16 both (the seed's defaults).
    max_concurrent_connections: int = 0
    max_frame_bytes: int = 64 * 1024
    stream_flush_ms: float = 0.0
    # Bounds that keep a client from waiting forever on a silent or dead actor.
    start_timeout_s: float = 2.0
    event_timeout_s: float = 30.0
    turn_timeout_s: float = 120.0
    actor_lost_after_s: float = 1.5
    # Length caps applied before anything is tokenized.
    max_utterance_chars: int = 16_000
    max_history_chars: int = 256_000
    max_persona_chars: int = 64_000
    session_ttl_s: float = 3600.0
    max_sessions: int = 100_000
    idle_timeout_s: float = 0.0  # 0 disables
    messages_per_minute: int = 600
    cancels_per_minute: int = 240
    # Browser pages allowed to connect (empty: any). A client that sends no Origin
    # (Pipecat, a server) is no browser and is always let through to the key check.
    allowed_origins: tuple[str, ...] = ()
    # Failed keys from one address before it gets HTTP 429 for the rest of the window.
    auth_max_failures: int = 10
    auth_failure_window_s: float = 60.0
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError("edge.port must be in 0..65535 (0 picks a free port)")
        if self.max_frame_bytes < 1024:
            raise ValueError("edge.max_frame_bytes must be at least 1024")
        if not self.api_key:
            raise ValueError("edge.api_key must not be empty")


class BusConfig(_Base):
    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 0.25
    drain_timeout_s: float = 5.0


class NatsServerConfig(_Base):
    """How ``just up`` runs nats-server; ignored when the bus lives elsewhere."""

    host: str = "127.0.0.1"
    port: int = 4222
    monitor_port: int = 8222
    store_dir: str = ".yap/nats"


class ModelsConfig(_Base):
    deploy: DeployModels = "both"
    concurrent_model_call: bool = False

    @property
    def chat(self) -> bool:
        return self.deploy in ("both", "chat")

    @property
    def tool(self) -> bool:
        return self.deploy in ("both", "tool")


class SamplingConfig(_Base):
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    # Generate to max_out past the model's end-of-sequence tokens (stop strings still
    # apply): fixed-length replies for benchmarks and for tests that need a turn that
    # is still running when they act, which a random-weight model does not promise.
    ignore_eos: bool = False


class EngineConfig(_Base):
    backend: EngineBackend = "transformers"
    model: str = "tiny-qwen2"
    max_out: int = 200
    device: str = "cpu"
    model_cache_dir: str = "~/.cache/yap-bus"
    cpu_threads: int = 1
    # GPU settings (vLLM); None means "by deploy mode".
    gpu_frac: float | None = None
    kv_dtype: Literal["auto", "fp8", "int8"] = "auto"
    quantization: str | None = None
    max_len: int = 5760
    max_num_batched_tokens: int | None = None
    enforce_eager: bool = False
    priority: int = 0
    # The benchmark engine's pace, in tokens per second.
    bench_tokens_per_s: float = 200.0
    # Benchmark engine only (bench.overhead): stamp each delta with its emit time,
    # and append "<request_id> <monotonic_ns>" lines to this file on every abort.
    bench_stamp: bool = False
    bench_abort_log: str | None = None
    sampling: SamplingConfig = SamplingConfig()


class ChatConfig(EngineConfig):
    history_max_tokens: int = 3000
    user_utt_max_tokens: int = 350


class ToolConfig(EngineConfig):
    max_out: int = 10
    history_max_tokens: int = 300
    user_utt_max_tokens: int = 350
    # Stop generating as soon as the yes/no answer is decided.
    early_stop: bool = True


class ActorConfig(_Base):
    heartbeat_interval_s: float = 0.25
    # Prometheus /metrics of each actor kind on this host; 0 turns it off.
    metrics_host: str = "127.0.0.1"
    tool_metrics_port: int = 0
    chat_metrics_port: int = 0
    max_running: int = 64
    drain_timeout_s: float = 5.0


class RecordingConfig(_Base):
    """Session recording on JetStream (``python -m replay``); off: it is user content."""

    enabled: bool = False
    # Kept this long and within this size, oldest dropped first; file storage in
    # the nats-server's JetStream store dir.
    max_age_s: float = 7 * 24 * 3600.0
    max_bytes: int = 1024**3
    # "" keeps the text; "blank" replaces utterance, history and persona text by as
    # many "_"; "module:function" names a function (field, text) -> text of your own.
    redact: str = ""

    def __post_init__(self) -> None:
        if self.max_age_s <= 0 or self.max_bytes <= 0:
            raise ValueError("recording.max_age_s and recording.max_bytes must be positive")


class LogConfig(_Base):
    level: str = "INFO"
    format: Literal["auto", "text", "json"] = "auto"


class Config(_Base):
    edge: EdgeConfig = EdgeConfig()
    bus: BusConfig = BusConfig()
    nats_server: NatsServerConfig = NatsServerConfig()
    models: ModelsConfig = ModelsConfig()
    chat: ChatConfig = ChatConfig()
    tool: ToolConfig = ToolConfig()
    actor: ActorConfig = ActorConfig()
    log: LogConfig = LogConfig()
    recording: RecordingConfig = RecordingConfig()

    @property
    def max_connections(self) -> int:
        if self.edge.max_concurrent_connections > 0:
            return self.edge.max_concurrent_connections
        return {"tool": 32, "chat": 24, "both": 16}[self.models.deploy]

    def gpu_frac(self, kind: Literal["tool", "chat"]) -> float:
        explicit = self.chat.gpu_frac if kind == "chat" else self.tool.gpu_frac
        if explicit is not None:
            return explicit
        if self.models.deploy != "both":
            return 0.90
        return 0.70 if kind == "chat" else 0.20
