"""The engine's metrics: its KV cache, its decode steps, its preemptions, the conversation states it keeps
and the prompt tokens they saved, and the engine processes replaced.

Recorded by the worker that owns the engine, from the steps its core sends (`EngineStepMetrics`), wherever
the core runs: an engine process writes no metric files, so the multiprocess rules of `__init__.py` hold.
"""

from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from qwen_chat.metrics.series import NAMESPACE

KV_CACHE_USAGE = Gauge(
    "kv_cache_usage_ratio",
    "Share of the batch engine's KV cache in use, 0 to 1 (the fullest worker's).",
    ["model"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
KV_CACHE_PAGES = Gauge(
    "kv_cache_pages",
    "Pages in the batch engine's KV cache, over all workers.",
    ["model"],
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
KV_CACHE_PAGE_SIZE = Gauge(
    "kv_cache_page_size_tokens",
    "Tokens per page of the batch engine's KV cache.",
    ["model"],
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)


_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ENGINE_STEP_SECONDS = Histogram(
    "engine_step_seconds",
    "How long one decode step of the batch engine took: the forward pass and sampling of every row.",
    ["model"],
    namespace=NAMESPACE,
    buckets=_STEP_BUCKETS,
)
ENGINE_BATCH_SIZE = Histogram(
    "engine_batch_size",
    "Sequences that got a token in one decode step of the batch engine.",
    ["model"],
    namespace=NAMESPACE,
    buckets=_BATCH_BUCKETS,
)
ENGINE_PREEMPTIONS = Counter(
    "engine_preemptions",
    "Running requests the batch engine paused (their KV cache freed, to be resumed) for lack of cache.",
    ["model"],
    namespace=NAMESPACE,
)
PREFIX_CACHE_QUERIES = Counter(
    "prefix_cache_queries",
    "Prompt tokens looked up in the prefix cache: the batch core's shared KV pages, the hybrid core's kept "
    "conversation states (exported under vLLM's name too, prefix_cache_queries).",
    ["model"],
    namespace=NAMESPACE,
)
PREFIX_CACHE_HITS = Counter(
    "prefix_cache_hits",
    "Of those, the prompt tokens found there and not prefilled again (exported under vLLM's name too).",
    ["model"],
    namespace=NAMESPACE,
)
KEPT_STATES = Gauge(
    "kept_conversation_states",
    "Conversation states the hybrid engine keeps for a next turn, over all workers.",
    ["model"],
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
ENGINE_RESTARTS = Counter(
    "engine_restarts",
    "Engine processes that stopped unexpectedly (killed, out of memory, a device error) and were replaced.",
    ["model"],
    namespace=NAMESPACE,
)


class EngineStepMetrics:
    """What each engine step tells `/metrics`: recorded by the worker that owns the engine, wherever the
    engine runs."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._seconds = ENGINE_STEP_SECONDS.labels(model)
        self._batch = ENGINE_BATCH_SIZE.labels(model)
        self._preemptions = ENGINE_PREEMPTIONS.labels(model)
        self._queries = PREFIX_CACHE_QUERIES.labels(model)
        self._hits = PREFIX_CACHE_HITS.labels(model)

    def observe(self, step: Any) -> None:
        if step.seconds > 0:  # cores that do not time steps (the simple one) send one row per token
            self._seconds.observe(step.seconds)
            self._batch.observe(len(step.rows))
        if step.preempted:
            self._preemptions.inc(step.preempted)
        if step.cache_usage >= 0:
            KV_CACHE_USAGE.labels(self._model).set(step.cache_usage)
        queried = sum(row.queried_tokens for row in step.rows)
        if queried:
            self._queries.inc(queried)
            self._hits.inc(sum(row.cached_tokens for row in step.rows))
        if step.kept_states >= 0:
            KEPT_STATES.labels(self._model).set(step.kept_states)


FAST_PATHS = ("cuda_graphs", "async_batching", "decode_kernel")
ENGINE_INFO = Gauge(
    "engine_info",
    "1 per worker, labelled with what its engine runs: device, dtype, attention implementation, and whether "
    "each of transformers' fast paths is on (CUDA graphs, async batching, the decode kernel).",
    ["model", "device", "dtype", "attention", *FAST_PATHS],
    namespace=NAMESPACE,
    multiprocess_mode="liveall",
)


class Facts(Protocol):
    """What the worker learnt of its engine once the model loaded (`engine.wire.ModelFacts`)."""

    kv_cache_pages: int
    kv_page_size: int
    device: str
    dtype: str
    attention: str
    fast_paths: list[str]


def publish_facts(model: str, facts: Facts) -> None:
    """The loaded engine's KV cache geometry and what it runs with, from the start."""
    KV_CACHE_USAGE.labels(model).set(0.0)
    KV_CACHE_PAGES.labels(model).set(facts.kv_cache_pages)
    KV_CACHE_PAGE_SIZE.labels(model).set(facts.kv_page_size)
    on = [str(path in facts.fast_paths).lower() for path in FAST_PATHS]
    ENGINE_INFO.labels(model, facts.device, facts.dtype, facts.attention or "unknown", *on).set(1)


def publish_zeros(model: str) -> None:
    ENGINE_STEP_SECONDS.labels(model)
    ENGINE_BATCH_SIZE.labels(model)
    ENGINE_PREEMPTIONS.labels(model)
    ENGINE_RESTARTS.labels(model)
    PREFIX_CACHE_QUERIES.labels(model)
    PREFIX_CACHE_HITS.labels(model)
    for gauge in (KV_CACHE_USAGE, KV_CACHE_PAGES, KV_CACHE_PAGE_SIZE, KEPT_STATES):
        gauge.labels(model).set(0)
