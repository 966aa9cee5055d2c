"""The rows of why clients might not get it: errors and refusals, the model and its workers, the engine."""

from __future__ import annotations

from dashboards.panels import (
    Panel,
    increase_by_pod,
    on_right_axis,
    percentiles,
    rate_by,
    steps,
    target,
    timeseries_panel,
)
from dashboards.promql import mean_by_pod, rate, request_ratio, series, sum_by

ADMITTED = 'outcome=~"stop|length|cancelled|timeout|error"'
ERROR_RATIO = request_ratio('outcome="error"', (ADMITTED,))
TIMEOUT_RATIO = request_ratio('outcome="timeout"', (ADMITTED,))
ERRORS = steps("green", (0.01, "orange"), (0.05, "red"))  # the QwenChatErrorRatioHigh bound is 5%
CACHE_SIZE = "cache size in tokens, all pods"  # the capacity: qwen_chat_kv_cache_pages counts every page


def errors_and_refusals() -> list[Panel]:
    return [
        timeseries_panel(
            "Error, timeout and refusal ratio",
            "Errors: share of admitted requests that ended with outcome error (the QwenChatErrorRatioHigh "
            "alert, default bound 5%). Timed out: share of admitted requests cut at their deadline "
            "(outcome timeout: QWEN_CHAT_REQUEST_TIMEOUT, chart server.requestTimeout, or the request's "
            "X-Request-Timeout / params.timeout); a rise with the queue means requests wait too long for a "
            "slot. Refused: share of all requests refused before decoding (rejected: bad request, too "
            "long, queue full, draining; rate_limited).",
            [
                target(ERROR_RATIO, "errors"),
                target(TIMEOUT_RATIO, "timed out"),
                target(request_ratio('outcome=~"rejected|rate_limited"'), "refused"),
            ],
            unit="percentunit",
            width=6,
            thresholds=ERRORS,
            dashed=True,
        ),
        timeseries_panel(
            "Rate-limited requests",
            "Requests refused because their user was over RATE_LIMIT or already had MAX_USER_REQUESTS "
            "replies running or waiting (requests_total outcome rate_limited; HTTP 429, /ws error "
            "rate_limited), per transport. A steady rate usually means one client is looping.",
            [rate_by("requests_total", "transport", matchers=('outcome="rate_limited"',))],
            unit="reqps",
            width=6,
            thresholds=steps("green", (1, "orange")),
        ),
        timeseries_panel(
            "Authentication failures",
            "Refused keys and browser origins per second (qwen_chat_auth_failures_total) by transport and "
            "reason. A burst of key failures is a client with a revoked key, or someone guessing keys.",
            [rate_by("auth_failures_total", "transport", "reason", model=False)],
            unit="reqps",
            width=6,
            thresholds=steps("green", (0.1, "orange"), (1, "red")),
        ),
        timeseries_panel(
            "Client disconnects",
            "Clients that went away while their reply was streaming (qwen_chat_client_disconnects_total), "
            "per transport; their generation stops within one decode step.",
            [rate_by("client_disconnects_total", "transport", model=False)],
            unit="reqps",
            width=6,
        ),
        timeseries_panel(
            "Refusals by reason",
            "Chat requests and /ws sockets refused per second (qwen_chat_refusals_total), by why: "
            "rate_limited, the key's caps user_requests and user_connections, overloaded (queue full), "
            "too_long, busy, bad_request, draining, model_not_found. The runbook's QwenChatQueueSaturated "
            "says what to do.",
            [rate_by("refusals_total", "reason")],
            unit="reqps",
            width=12,
            thresholds=steps("green", (1, "orange")),
        ),
        timeseries_panel(
            "Per-user caps",
            "Refusals because one key was over its caps, by transport: user_requests (it already had "
            "MAX_USER_REQUESTS replies running or waiting; HTTP 429) and user_connections (it had "
            "MAX_USER_CONNECTIONS /ws sockets open; the new one is closed with code 1013).",
            [
                rate_by(
                    "refusals_total",
                    "transport",
                    "reason",
                    matchers=('reason=~"user_requests|user_connections"',),
                )
            ],
            unit="reqps",
            width=12,
            thresholds=steps("green", (0.1, "orange")),
        ),
    ]


def per_pod(gauge: str) -> str:
    """A pod's value of a gauge its workers share (the multiprocess mode already merged them)."""
    return f"max by (pod) ({series(gauge)})"


def model_and_workers() -> list[Panel]:
    kv_cache = timeseries_panel(
        "KV cache usage",
        "Share of the batch engine's KV cache in use per pod, 0 to 1 (qwen_chat_kv_cache_usage_ratio, "
        "the fullest worker), with the cache's size in pages (qwen_chat_kv_cache_pages) of "
        "qwen_chat_kv_cache_page_size_tokens tokens. Near 1 new requests wait for pages: lower "
        "maxRunning or raise kvCacheMemoryFraction / kvCacheTokens.",
        [
            target(per_pod("kv_cache_usage_ratio"), "{{pod}} usage"),
            target(f"sum({per_pod('kv_cache_pages')} * {per_pod('kv_cache_page_size_tokens')})", CACHE_SIZE),
        ],
        unit="percentunit",
        width=6,
        thresholds=steps("green", (0.8, "orange"), (0.95, "red")),
        max_value=1,
    )
    return [
        timeseries_panel(
            "Model loaded per pod",
            "Per pod: gunicorn workers that have loaded and warmed the model (sum of "
            "qwen_chat_model_loaded) against the workers running (count). A pod is ready only when both "
            "are equal.",
            [
                target(f"sum by (pod) ({series('model_loaded')})", "{{pod}} loaded"),
                target(f"count by (pod) ({series('model_loaded')})", "{{pod}} workers"),
            ],
            unit="short",
            width=6,
            thresholds=steps("red", (1, "green")),
            decimals=0,
        ),
        timeseries_panel(
            "Model load time",
            "Seconds each worker took to load and warm the model (qwen_chat_model_load_seconds, one "
            "series per worker pid). Past model.loadTimeoutSeconds (default 900 s) the startup probe "
            "restarts the pod.",
            [target(f"max by (pod, pid) ({series('model_load_seconds')})", "{{pod}} pid {{pid}}")],
            unit="s",
            width=6,
            thresholds=steps("green", (300, "orange"), (900, "red")),
        ),
        timeseries_panel(
            "Worker restarts",
            "gunicorn workers that exited and were replaced (increase of qwen_chat_worker_exits_total, "
            "counted by each pod's gunicorn master): crashes, out-of-memory kills, timeouts. Container "
            "restarts reset the counter: see kube_pod_container_status_restarts_total for those.",
            [increase_by_pod("worker_exits_total", "{{pod}}", model=False)],
            unit="short",
            width=6,
            thresholds=steps("green", (1, "red")),
            bars=True,
            decimals=0,
        ),
        on_right_axis(kv_cache, CACHE_SIZE, "short"),
    ]


def engine() -> list[Panel]:
    return [
        timeseries_panel(
            "Engine step time",
            "How long one decode step of the batch engine takes (qwen_chat_engine_step_seconds, p50 and "
            "p95 over pods): the forward pass and sampling of every running sequence. It grows with the "
            "batch size and with long prompts being prefilled; inter-token latency cannot be lower.",
            percentiles("engine_step_seconds"),
            unit="s",
            thresholds=steps("green", (0.1, "orange"), (0.5, "red")),
        ),
        timeseries_panel(
            "Engine batch size",
            "Sequences that got a token in one decode step, on average per pod "
            "(qwen_chat_engine_batch_size). Near maxRunning the engine is full and requests wait; near 1 "
            "under load, requests do not share forward passes (the simple engine, or a cache too small).",
            [target(mean_by_pod("engine_batch_size"), "{{pod}}")],
            unit="short",
        ),
        timeseries_panel(
            "Preemptions and engine restarts",
            "Running requests the batch engine paused for lack of KV cache "
            "(qwen_chat_engine_preemptions_total; they resume and keep their reply, but wait) and engine "
            "processes that died and were replaced (qwen_chat_engine_restarts_total; their requests "
            "failed). Any restart deserves a look at the logs (engine_process_died).",
            [
                increase_by_pod("engine_preemptions_total", "{{pod}} preempted"),
                increase_by_pod("engine_restarts_total", "{{pod}} engine restarts"),
            ],
            unit="short",
            thresholds=steps("green", (1, "red")),
        ),
        timeseries_panel(
            "Prefix cache hit ratio",
            "Per pod, the share of prompt tokens found in the prefix cache and not prefilled again "
            "(qwen_chat_prefix_cache_hits_total over qwen_chat_prefix_cache_queries_total, also exported as "
            "vllm:prefix_cache_hits_total and vllm:prefix_cache_queries_total): the batch engine's shared KV "
            "pages, the hybrid engine's kept conversation states. A conversation's later turns should hit; "
            "a low ratio behind a prefix-aware router means requests do not land where their history is.",
            [
                target(
                    f"{sum_by(('pod',), rate('prefix_cache_hits_total'))} / "
                    f"{sum_by(('pod',), rate('prefix_cache_queries_total'))}",
                    "{{pod}}",
                )
            ],
            unit="percentunit",
        ),
        timeseries_panel(
            "Kept conversation states",
            "The conversation states the hybrid engine (Qwen3.5/3.6, Qwen3-Next) keeps per pod for a next "
            "turn (qwen_chat_kept_conversation_states; the least recently used go first when requests need "
            "the memory). Other engines keep none.",
            [target(f"sum by (pod) ({series('kept_conversation_states')})", "{{pod}} kept states")],
            unit="short",
        ),
    ]
