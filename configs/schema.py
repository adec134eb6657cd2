"""The shape of a deployment's configuration.

Every struct forbids unknown fields so that a typo in a TOML file fails at start
with the key's path instead of being silently ignored.
"""

from __future__ import annotations

import ipaddress
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
    "LauncherConfig",
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
    # How a chat leg finds its actor: "affine" keeps a session on the chat actor that
    # holds its prefix cache while it lives and has room, else the least-loaded one;
    # "queue" lets the NATS queue group pick (docs/benchmarks.md compares them).
    chat_routing: Literal["affine", "queue"] = "affine"
    # A leg that finds every actor of its kind at max_running waits, at most this many
    # per kind and this long, for one to have room; then server_at_capacity.
    admission_queue: int = 64
    admission_timeout_s: float = 2.0
    # Length caps applied before anything is tokenized.
    max_utterance_chars: int = 16_000
    max_history_chars: int = 256_000
    max_persona_chars: int = 64_000
    # Cap of a server-kept history (a start with server_history), in characters, cut
    # in steps by bus.history.cap_history. 0: by the chat budget (Config.
    # server_history_chars): 4 characters per token of chat.history_max_tokens, about
    # what the chat actor keeps of English, so it rarely trims what the edge stores.
    server_history_max_chars: int = 0
    session_ttl_s: float = 3600.0
    max_sessions: int = 100_000
    idle_timeout_s: float = 0.0  # 0 disables
    messages_per_minute: int = 600
    cancels_per_minute: int = 240
    # Browser pages allowed to connect (empty: any). A client that sends no Origin
    # (Pipecat, a server) is no browser and is always let through to the key check.
    allowed_origins: tuple[str, ...] = ()
    # Failed keys from one address before it gets HTTP 429 for the rest of the window
    # (a request with the right key is never refused).
    auth_max_failures: int = 10
    auth_failure_window_s: float = 60.0
    # Proxies (addresses or CIDR blocks) whose X-Forwarded-For names the real client,
    # for the auth throttle; empty: the header is ignored (anyone can write it).
    trusted_proxies: tuple[str, ...] = ()
    shutdown_timeout_s: float = 5.0
    # Edge processes `just up` starts on this host, all on `port` (SO_REUSEPORT).
    # max_concurrent_connections is the limit of all of them together, counted with
    # a slot file at slots_path (edge/capacity.py).
    processes: int = 1
    slots_path: str = ".yap/edge-slots"
    # JetStream replicas of the session bucket when the edge creates it: 1 on one
    # nats-server, 3 on a 3-node cluster (a replica per node survives a node's loss).
    session_replicas: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError("edge.port must be in 0..65535 (0 picks a free port)")
        if self.processes < 1:
            raise ValueError("edge.processes must be at least 1")
        if self.admission_queue < 0 or self.admission_timeout_s < 0:
            raise ValueError("edge.admission_queue and edge.admission_timeout_s must be >= 0")
        if not 1 <= self.session_replicas <= 5:
            raise ValueError("edge.session_replicas must be in 1..5 (JetStream's limit)")
        if not 0 <= self.server_history_max_chars <= self.max_history_chars:
            # A stored history never outgrows what a client may send as history_text,
            # so a client can always take its conversation back.
            raise ValueError("edge.server_history_max_chars must be in 0..max_history_chars")
        if self.max_frame_bytes < 1024:
            raise ValueError("edge.max_frame_bytes must be at least 1024")
        if not self.api_key:
            raise ValueError("edge.api_key must not be empty")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"edge.trusted_proxies: {proxy!r} is not an address or CIDR block"
                ) from None


class BusConfig(_Base):
    url: str = "nats://127.0.0.1:4222"
    # Several nodes of one NATS cluster: connect to any, fail over to the others.
    # Empty means just `url`.
    servers: tuple[str, ...] = ()
    # Try `servers` in the given order (each host's own node first) instead of
    # shuffling them to spread clients over the cluster.
    prefer_first: bool = False
    user: str | None = None
    password: str | None = None
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 0.25
    drain_timeout_s: float = 5.0

    @property
    def urls(self) -> tuple[str, ...]:
        """Where to connect, in order of preference: ``servers``, else ``url``."""
        return self.servers or (self.url,)


class NatsServerConfig(_Base):
    """How ``just up`` runs nats-server; ignored when the bus lives elsewhere.

    With ``nodes`` > 1 the launcher runs a cluster on this host: node ``i`` listens
    on ``port + i``, ``monitor_port + i`` and ``cluster_port + i`` and keeps its
    JetStream data in ``store_dir/node-i``. For development; a real cluster has one
    node per host (docs/deploy.md).
    """

    host: str = "127.0.0.1"
    port: int = 4222
    monitor_port: int = 8222
    store_dir: str = ".yap/nats"
    nodes: int = 1
    cluster_port: int = 6222
    cluster_name: str = "yap"

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 9:
            raise ValueError("nats_server.nodes must be in 1..9")


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
    # Once a reply is done, prefill the session's next prompt up to its utterance
    # (this history + this exchange, in the canonical format of bus/history.py) with a
    # low-priority warm request, cancelled by the session's next start.
    warm_next_turn: bool = True


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
    # Replicas `just up` runs of each kind, started one after the other. Slot i is
    # `tool-i` / `chat-i`, an id that stays with the slot across restarts.
    tool_replicas: int = 1
    chat_replicas: int = 1
    # Per replica, CUDA_VISIBLE_DEVICES ("0", "1", "0,1"); empty: what the
    # environment says. Either empty or one entry per replica.
    tool_gpus: tuple[str, ...] = ()
    chat_gpus: tuple[str, ...] = ()
    # Per replica, the share of its GPU's memory (vLLM); empty: `tool.gpu_frac` /
    # `chat.gpu_frac` for each. The launcher checks that each GPU's shares fit.
    tool_gpu_fracs: tuple[float, ...] = ()
    chat_gpu_fracs: tuple[float, ...] = ()
    # Replica i > 0 serves metrics on its kind's port + i * stride, so replicas
    # of one kind never collide with each other or with the other kind.
    metrics_port_stride: int = 100

    def __post_init__(self) -> None:
        for kind in ("tool", "chat"):
            replicas = getattr(self, f"{kind}_replicas")
            if replicas < 0:
                raise ValueError(f"actor.{kind}_replicas must not be negative")
            for field in (f"{kind}_gpus", f"{kind}_gpu_fracs"):
                given = len(getattr(self, field))
                if given not in (0, replicas):
                    raise ValueError(
                        f"actor.{field} has {given} entries for {replicas} replica(s): "
                        "give one per replica or none"
                    )
            for frac in getattr(self, f"{kind}_gpu_fracs"):
                if not 0.0 < frac <= 1.0:
                    raise ValueError(f"actor.{kind}_gpu_fracs entries must be in (0, 1]")
        if self.metrics_port_stride < 1:
            raise ValueError("actor.metrics_port_stride must be at least 1")


class LauncherConfig(_Base):
    """How `just up` supervises its children.

    A child that dies after it was ready is restarted after an exponential backoff
    (``backoff_initial_s`` doubling up to ``backoff_max_s``, each delay moved by up to
    ``backoff_jitter`` of itself so replicas that died together do not come back in
    lock step). ``max_crashes`` crashes of one service within ``crash_window_s``
    mean it will not get better: everything stops and the launcher exits non-zero.
    A child that fails during the first start is a start failure, never retried.
    """

    restart: bool = True
    max_crashes: int = 5
    crash_window_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_jitter: float = 0.2
    # Prometheus /metrics of the launcher itself (restarts); 0 turns it off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0

    def __post_init__(self) -> None:
        if self.max_crashes < 1:
            raise ValueError("launcher.max_crashes must be at least 1")
        if self.crash_window_s <= 0:
            raise ValueError("launcher.crash_window_s must be positive")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("launcher: need 0 < backoff_initial_s <= backoff_max_s")
        if not 0.0 <= self.backoff_jitter < 1.0:
            raise ValueError("launcher.backoff_jitter must be in [0, 1)")


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
    launcher: LauncherConfig = LauncherConfig()
    log: LogConfig = LogConfig()
    recording: RecordingConfig = RecordingConfig()

    @property
    def max_connections(self) -> int:
        if self.edge.max_concurrent_connections > 0:
            return self.edge.max_concurrent_connections
        return {"tool": 32, "chat": 24, "both": 16}[self.models.deploy]

    @property
    def server_history_chars(self) -> int:
        """The cap of a server-kept history: ``edge.server_history_max_chars``, or by the
        chat budget (4 characters a token), within ``edge.max_history_chars``."""
        if self.edge.server_history_max_chars > 0:
            return self.edge.server_history_max_chars
        return min(4 * self.chat.history_max_tokens, self.edge.max_history_chars)

    def gpu_frac(self, kind: Literal["tool", "chat"]) -> float:
        explicit = self.chat.gpu_frac if kind == "chat" else self.tool.gpu_frac
        if explicit is not None:
            return explicit
        if self.models.deploy != "both":
            return 0.90
        return 0.70 if kind == "chat" else 0.20
