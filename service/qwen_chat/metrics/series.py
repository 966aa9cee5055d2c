"""The service's Prometheus series (prefix `qwen_chat_`), correct across gunicorn workers.

Under `qwen-chat serve` every worker writes its values into PROMETHEUS_MULTIPROC_DIR and `/metrics`
aggregates them (prometheus-client multiprocess mode): counters and histograms add up, `livesum` gauges
sum over live workers, `liveall` gauges keep one series per live worker (label `pid`). Without that
directory (one process, as in unit tests) the default registry is used.
"""

from __future__ import annotations

import contextlib
import enum
import glob
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from qwen_chat.metrics.model_server_protocol import WithAliases

__all__ = [
    "ACTIVE_CONNECTIONS",
    "AUTH_FAILURES",
    "AUTH_FAILURE_KINDS",
    "CLIENT_DISCONNECTS",
    "DISCONNECT_TRANSPORTS",
    "DRAINING",
    "GENERATION_TOKENS",
    "INTER_TOKEN_LATENCY",
    "MODEL_LOADED",
    "MODEL_LOAD_SECONDS",
    "MULTIPROC_ENV",
    "NAMESPACE",
    "OUTCOMES",
    "PROMPT_TOKENS",
    "REFUSALS",
    "REFUSAL_REASONS",
    "REQUESTS",
    "REQUESTS_RUNNING",
    "REQUESTS_WAITING",
    "REQUEST_DURATION",
    "REQUEST_QUEUE",
    "TIME_TO_FIRST_TOKEN",
    "TOKENS_PER_SECOND",
    "USER_CONNECTIONS",
    "USER_REQUESTS",
    "WORKER_EXITS",
    "Transport",
    "auth_failed",
    "mark_worker_dead",
    "publish_request_zeros",
    "render",
]

NAMESPACE = "qwen_chat"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Transport(enum.StrEnum):
    """The `transport` label: which API a request came through."""

    WS = "ws"  # /ws
    HTTP = "http"  # /chat (and every HTTP path for auth_failures_total)
    SSE = "sse"  # /chat_stream
    OPENAI = "openai"  # /v1/...


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)
_SPEED_BUCKETS = (1, 2.5, 5, 10, 20, 40, 60, 80, 120, 160, 240, 320, 480, 640, 1000, 2000)

GENERATION_TOKENS = Counter(
    "generation_tokens_total", "Tokens generated and sent to clients.", ["model"], namespace=NAMESPACE
)
PROMPT_TOKENS = Counter(
    "prompt_tokens_total", "Prompt tokens of accepted requests.", ["model"], namespace=NAMESPACE
)
TOKENS_PER_SECOND = Histogram(
    "generation_tokens_per_second",
    "Decode speed of each request (tokens/s).",
    ["model"],
    namespace=NAMESPACE,
    buckets=_SPEED_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "time_to_first_token_seconds",
    "From receiving a chat to sending its first token.",
    ["model"],
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "inter_token_latency_seconds",
    "Between two token messages sent to a client.",
    ["model"],
    namespace=NAMESPACE,
    buckets=_ITL_BUCKETS,
)
REQUEST_DURATION = Histogram(
    "request_duration_seconds",
    "From receiving a chat to sending its last message.",
    ["model"],
    namespace=NAMESPACE,
    buckets=_DURATION_BUCKETS,
)
REQUEST_QUEUE = Histogram(
    "request_queue_seconds",
    "Time an accepted request waited for a decoding slot.",
    ["model"],
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)
ACTIVE_CONNECTIONS = Gauge(
    "active_connections",
    "Open WebSocket connections.",
    ["transport"],
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
REQUESTS_RUNNING = Gauge(
    "requests_running", "Requests decoding now.", ["model"], namespace=NAMESPACE, multiprocess_mode="livesum"
)
REQUESTS_WAITING = Gauge(
    "requests_waiting",
    "Requests queued for a decoding slot.",
    ["model"],
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
REQUESTS = Counter(
    "requests_total",
    "Chat requests by transport and outcome.",
    ["model", "transport", "outcome"],
    namespace=NAMESPACE,
)
REFUSALS = Counter(
    "refusals_total",
    "Chat requests (and /ws sockets) refused, by why: rate limit, a user's caps, full queue, long prompt.",
    ["model", "transport", "reason"],
    namespace=NAMESPACE,
)
CLIENT_DISCONNECTS = Counter(
    "client_disconnects_total",
    "Clients that went away while a reply was streaming.",
    ["transport"],
    namespace=NAMESPACE,
)
AUTH_FAILURES = Counter(
    "auth_failures_total", "Refused credentials or origins.", ["transport", "reason"], namespace=NAMESPACE
)
WORKER_EXITS = Counter(
    "worker_exits_total",
    "gunicorn workers that exited (crashed, killed or restarted); counted by the master.",
    namespace=NAMESPACE,
)
MODEL_LOADED = Gauge(
    "model_loaded",
    "1 once this worker has loaded and warmed the model.",
    ["model"],
    namespace=NAMESPACE,
    multiprocess_mode="liveall",
)
MODEL_LOAD_SECONDS = Gauge(
    "model_load_seconds",
    "How long this worker took to load and warm the model.",
    ["model"],
    namespace=NAMESPACE,
    multiprocess_mode="liveall",
)


# Every label value a labelled series can take, so that each one exists, at 0, from a worker's start.
# `timeout`: admitted, then cut at its deadline (QWEN_CHAT_REQUEST_TIMEOUT or the request's own).
OUTCOMES = ("stop", "length", "cancelled", "timeout", "error", "rejected", "rate_limited")
# A refusal's reason is its `Refusal.cause`: the error code, or what of several causes of one code it was.
USER_REQUESTS = "user_requests"  # the key has MAX_USER_REQUESTS replies at once (429)
USER_CONNECTIONS = "user_connections"  # the key has MAX_USER_CONNECTIONS sockets open (/ws closed 1013)
DRAINING = "draining"  # the pod is shutting down (503)
REFUSAL_REASONS = (
    "rate_limited",
    USER_REQUESTS,
    "overloaded",
    DRAINING,
    "too_long",
    "busy",
    "bad_request",
    "model_not_found",
)
DISCONNECT_TRANSPORTS = (Transport.WS,)  # where a client going away mid-reply is noticed
AUTH_FAILURE_KINDS = ((Transport.WS, "key"), (Transport.WS, "origin"), (Transport.HTTP, "key"))


def auth_failed(transport: Transport, reason: str) -> None:
    """Count a refused credential (`key`) or browser origin (`origin`)."""
    assert (transport, reason) in AUTH_FAILURE_KINDS, (transport, reason)
    AUTH_FAILURES.labels(transport, reason).inc()


def publish_request_zeros(model: str) -> None:
    """Create every series at worker start, each label value of it included, so that dashboards and `rate()`
    show 0 on a fresh pod rather than no data."""
    for histogram in (
        TOKENS_PER_SECOND,
        TIME_TO_FIRST_TOKEN,
        INTER_TOKEN_LATENCY,
        REQUEST_DURATION,
        REQUEST_QUEUE,
    ):
        histogram.labels(model)
    GENERATION_TOKENS.labels(model)
    PROMPT_TOKENS.labels(model)
    for transport in Transport:
        for outcome in OUTCOMES:
            REQUESTS.labels(model, transport, outcome)
        for reason in REFUSAL_REASONS:
            REFUSALS.labels(model, transport, reason)
    REFUSALS.labels(model, Transport.WS, USER_CONNECTIONS)
    for transport in DISCONNECT_TRANSPORTS:
        CLIENT_DISCONNECTS.labels(transport)
    for transport, reason in AUTH_FAILURE_KINDS:
        AUTH_FAILURES.labels(transport, reason)
    ACTIVE_CONNECTIONS.labels(Transport.WS).set(0)
    REQUESTS_RUNNING.labels(model).set(0)
    REQUESTS_WAITING.labels(model).set(0)
    MODEL_LOADED.labels(model).set(0)


class _WorkerFilesCollector(multiprocess.MultiProcessCollector):
    """Skips a file a worker is creating right now: it is empty until prometheus-client sizes it."""

    def collect(self) -> Iterable[Any]:
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            with contextlib.suppress(OSError):
                if os.path.getsize(path) >= 8:
                    files.append(path)
        merged: Iterable[Any] = self.merge(files, accumulate=True)
        return merged


def render() -> tuple[bytes, str]:
    """The exposition text for /metrics, aggregated over all workers when running multiprocess, with the
    model-server protocol's vLLM names beside ours (`model_server_protocol.py`)."""
    source: Any = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        source = CollectorRegistry()
        _WorkerFilesCollector(source)
    return generate_latest(WithAliases(source)), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Called by the gunicorn master when a worker exits: its live gauges leave /metrics."""
    WORKER_EXITS.inc()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)
