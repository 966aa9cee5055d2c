"""The one source of configuration: environment variables prefixed `QWEN_CHAT_` (README, "Settings").

The chart turns its values into these variables in `charts/qwen-chat/templates/deployment.yaml`."""

from __future__ import annotations

import os
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from qwen_chat.sampling_params import DEFAULTS, MaxNewTokens, SamplingFields

DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"


class Settings(BaseSettings, SamplingFields):
    model_config = SettingsConfigDict(env_prefix="QWEN_CHAT_", extra="ignore")

    # Model and inference.
    model: str = DEFAULT_MODEL
    served_model_name: str | None = Field(default=None, description="the `model` label and /v1/models id")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_input_tokens: int | None = Field(default=None, ge=16, description="None: derived from the model")
    # Sampling defaults (and the cap on max_new_tokens), in the ranges a request may ask for: TEMPERATURE,
    # TOP_P, TOP_K, MIN_P, REPETITION_PENALTY, PRESENCE_PENALTY, FREQUENCY_PENALTY (`SamplingFields`). Unset,
    # each comes from the checkpoint's generation_config.json, else the service's own (sampling_params.py).
    max_new_tokens: MaxNewTokens = DEFAULTS.max_new_tokens
    # Where unset sampling defaults come from, as vLLM's --generation-config: `auto`, the checkpoint's
    # generation_config.json; `service`, the service's own only; else a folder with a generation_config.json.
    generation_config: str = "auto"
    # CPU threads for torch in each worker; 0 shares the machine's cores among WORKERS. Oversubscribed
    # OpenMP threads spin and starve the event loops (slow probes), so the default never oversubscribes.
    torch_threads: int = Field(default=0, ge=0)
    # Sequences decoding at once per worker; 0: 128 on CUDA, 16 on CPU (engine/core/kv_cache.py).
    max_running: int = Field(default=0, ge=0, description="sequences decoding at once per worker")
    max_waiting: int = Field(default=32, ge=0, description="requests queued per worker before refusing")
    # Per-user caps, per worker like the two above, for users with a key (none when AUTH_ENABLED is false):
    # replies running or waiting at once (0: half of MAX_RUNNING, at least 1; past it, `rate_limited`), and
    # open /ws connections (past it, the socket is closed with 1013). Waiting requests take turns by user.
    max_user_requests: int = Field(default=0, ge=0, description="replies running or waiting per user")
    max_user_connections: int = Field(default=16, ge=1, description="open /ws connections per user")
    # `batch`: continuous batching on transformers' manager (requests share forward passes);
    # `simple`: one `model.generate` per request in threads. See docs/engines.md.
    engine: Literal["batch", "simple"] = "batch"
    # Where the engine decodes: true, a child process of each worker (the event loop and the decoder do not
    # share a GIL); false, a thread of the worker. After more than ENGINE_RESTART_LIMIT engine processes died
    # within five minutes, the worker exits (Kubernetes then restarts the pod with back-off).
    engine_process: bool = True
    engine_restart_limit: int = Field(default=3, ge=0)
    # The batch engine's KV cache, sized from memory: on CUDA this fraction of the device memory free after
    # the weights; on CPU KV_CACHE_TOKENS (0: 32,768). KV_CACHE_TOKENS > 0 fixes the size on either device.
    # Tokens per page (0: 256 on CUDA, 32 on CPU) and per forward pass (0: 8192 on CUDA, 512 on CPU).
    kv_cache_memory_fraction: float = Field(default=0.8, gt=0.0, lt=1.0)
    kv_cache_tokens: int = Field(default=0, ge=0)
    kv_page_size: int = Field(default=0, ge=0)
    max_batch_tokens: int = Field(default=0, ge=0)
    # The decode kernel's block table on CUDA, in pages per request; 0: enough for the longest admitted one.
    kv_pages_per_request: int = Field(default=0, ge=0)
    # The batch engine's CUDA graphs on a GPU: `auto`, transformers' choice (on with a flash attention
    # kernel); `on`, also with SDPA; `off`. Async batching follows transformers' default (on with graphs).
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    # The attention the model runs (transformers' `attn_implementation`): `auto` is flash attention on CUDA
    # where it loads (the flash_attn package, or the hub kernel the CUDA image carries), else SDPA, with a
    # warning; any other value (`sdpa`, `flash_attention_2`, `kernels-community/...`) loads or fails to start.
    attention: str = "auto"
    # A `/v1/completions` text prompt's control-token text (`<|im_start|>`, `</tool_response>`...): read as
    # those tokens when true, as vLLM reads it; as text when false, like every chat message's text.
    completions_control_tokens: bool = False
    # Where a Qwen v1 checkpoint is converted to Qwen2 once (engine/model/families.py); None:
    # `qwen-chat/converted` under HF_HOME (the chart's model cache volume), so a restart loads it at once.
    conversion_cache: Path | None = None

    # HTTP server.
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    drain_seconds: float = Field(default=30.0, ge=0.0)
    # Seconds a chat request may take from its arrival to its last token, queue wait included; past it the
    # reply ends `timeout` and its slot is freed. A request may ask for less (`X-Request-Timeout`, /ws
    # `params.timeout`), never more. Unset or 0: no bound.
    request_timeout: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    # Where gunicorn workers share readiness and metrics files; `qwen-chat serve` picks a fresh
    # temporary folder when unset. It must be writable (an emptyDir in Kubernetes).
    state_dir: Path | None = None
    # The pod's KV-cache events (vLLM's ZMQ format, for llm-d's precise prefix-cache scorer): the PUB
    # endpoint, e.g. `tcp://*:5557`; empty publishes nothing. KV_EVENTS_TOPIC empty is
    # `kv@<POD_IP or host name>:<PORT>@<model name>`. See docs/scale-out.md.
    kv_events_endpoint: str = ""
    kv_events_topic: str = ""
    # The render endpoints (`/v1/*/render`) answer without a key: llm-d's token producer sends none.
    render_without_key: bool = False

    # Authentication.
    credentials_dir: Path = Path("/etc/qwen-chat/credentials")
    credentials_reload_seconds: float = Field(default=10.0, gt=0.0)
    auth_enabled: bool = True
    allow_query_auth: bool = False
    # Comma-separated in the environment: "https://chat.example.com,https://ops.example.com".
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # WebSocket limits.
    max_message_bytes: int = Field(default=256 * 1024, ge=1024, description="largest accepted /ws frame")

    # Per-user chat request limit (`limits` syntax) and where its counters live (memory://, redis://...).
    rate_limit: str = "50/minute"
    rate_limit_storage: str = "memory://"

    # Logging.
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_prompts: bool = False
    # The OTLP exporter's headers (OTEL_EXPORTER_OTLP_HEADERS's `k=v,k2=v2`) from a file: a mounted Secret.
    otlp_headers_file: Path | None = None

    @cached_property
    def model_name(self) -> str:
        """The name clients and dashboards see: SERVED_MODEL_NAME, else the folder name of a local model."""
        if self.served_model_name:
            return self.served_model_name
        path = Path(self.model)
        return path.name if path.is_dir() else self.model

    @property
    def conversion_cache_dir(self) -> Path:
        if self.conversion_cache is not None:
            return self.conversion_cache
        from huggingface_hub.constants import HF_HOME

        return Path(HF_HOME) / "qwen-chat" / "converted"

    @property
    def torch_threads_per_worker(self) -> int:
        if self.torch_threads:
            return self.torch_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.workers)

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        from limits import parse

        parse(value)  # raises ValueError with the reason
        return value

    @field_validator("generation_config")
    @classmethod
    def _check_generation_config(cls, value: str) -> str:
        if value in ("auto", "service") or (Path(value) / "generation_config.json").is_file():
            return value
        raise ValueError(f"{value!r} is neither `auto`, `service` nor a folder with a generation_config.json")

    @field_validator("request_timeout", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("request_timeout")
    @classmethod
    def _zero_is_off(cls, value: float | None) -> float | None:
        return value or None

    @field_validator("kv_events_endpoint")
    @classmethod
    def _check_kv_events_endpoint(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("tcp://", "ipc://")):
            raise ValueError(f"{value!r} is not a ZMQ endpoint to bind, e.g. `tcp://*:5557`")
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
