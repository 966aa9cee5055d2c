"""The rows of what clients get: an overview, throughput, load and latency.

Thresholds follow the service's defaults and the alert rules' default bounds (charts/qwen-chat/values.yaml).
"""

from __future__ import annotations

from dashboards.health import ERROR_RATIO, ERRORS
from dashboards.panels import (
    TOKENS_PER_SECOND,
    Panel,
    percentiles,
    rate_by,
    stat_panel,
    steps,
    target,
    timeseries_panel,
)
from dashboards.promql import quantile, rate, series, sum_by

WAITING = steps("green", (16, "orange"), (26, "red"))  # MAX_WAITING is 32 per worker
TTFT = steps("green", (1, "orange"), (2, "red"))  # the QwenChatTimeToFirstTokenHigh bound is 2 s


def overview() -> list[Panel]:
    ready = f"count(min by (namespace, pod) ({series('model_loaded')}) == 1) or vector(0)"
    return [
        stat_panel(
            "Ready pods",
            "Pods whose every gunicorn worker has loaded and warmed the model (qwen_chat_model_loaded is "
            "1 on all of the pod's workers). 0 means no replica can answer: see the "
            "QwenChatNoReadyReplica alert.",
            ready,
            unit="short",
            thresholds=steps("red", (1, "green")),
            decimals=0,
        ),
        stat_panel(
            "Generated tokens/s",
            "Tokens sent to clients per second, over all selected pods (rate of "
            "qwen_chat_generation_tokens_total).",
            sum_by((), rate("generation_tokens_total")),
            unit=TOKENS_PER_SECOND,
        ),
        stat_panel(
            "Open WebSocket connections",
            "Open /ws connections over all selected pods and workers (qwen_chat_active_connections).",
            sum_by((), series("active_connections", 'transport="ws"', model=False)),
            unit="short",
            decimals=0,
        ),
        stat_panel(
            "Requests waiting",
            "Requests queued for a decoding slot over all selected pods (qwen_chat_requests_waiting). "
            "Each worker refuses new requests once MAX_WAITING (chart: server.maxWaiting, default 32) "
            "wait; thresholds assume one worker with the default.",
            sum_by((), series("requests_waiting")),
            unit="short",
            thresholds=WAITING,
            decimals=0,
        ),
        stat_panel(
            "Time to first token p95",
            "95th percentile of the time from receiving a chat to sending its first token, over all "
            "selected pods. The QwenChatTimeToFirstTokenHigh alert fires above "
            "monitoring.prometheusRule.ttftP95Seconds (default 2 s).",
            quantile(0.95, "time_to_first_token_seconds"),
            unit="s",
            thresholds=TTFT,
        ),
        stat_panel(
            "Error ratio",
            "Share of admitted requests (outcome stop, length, cancelled, timeout or error) that ended with "
            "outcome error. The QwenChatErrorRatioHigh alert fires above "
            "monitoring.prometheusRule.errorRatio (default 5%). No data: no requests in the interval.",
            ERROR_RATIO,
            unit="percentunit",
            thresholds=ERRORS,
            decimals=1,
        ),
    ]


def throughput() -> list[Panel]:
    return [
        timeseries_panel(
            "Generated tokens per second",
            "Tokens sent to clients per second (rate of qwen_chat_generation_tokens_total): the total "
            "over the selected pods and each pod's share.",
            [
                target(sum_by((), rate("generation_tokens_total")), "total"),
                rate_by("generation_tokens_total", "pod"),
            ],
            unit=TOKENS_PER_SECOND,
        ),
        timeseries_panel(
            "Per-request decode speed",
            "Decode speed of each finished request, in tokens per second of generation "
            "(qwen_chat_generation_tokens_per_second histogram): p50 is the typical request, p95 the "
            "fastest 5%. A falling p50 with a rising batch means the GPU is saturated.",
            percentiles("generation_tokens_per_second"),
            unit=TOKENS_PER_SECOND,
            thresholds=steps("red", (5, "orange"), (10, "green")),
        ),
        timeseries_panel(
            "Prompt tokens per second",
            "Prompt tokens of accepted requests per second (rate of qwen_chat_prompt_tokens_total), per "
            "pod: the prefill load.",
            [rate_by("prompt_tokens_total", "pod")],
            unit=TOKENS_PER_SECOND,
        ),
    ]


def load() -> list[Panel]:
    return [
        timeseries_panel(
            "Active WebSocket connections",
            "Open /ws connections per pod, summed over the pod's workers (qwen_chat_active_connections, "
            "transport ws). Connections stay open between chats.",
            [
                target(
                    sum_by(("pod",), series("active_connections", 'transport="ws"', model=False)), "{{pod}}"
                )
            ],
            unit="short",
            decimals=0,
        ),
        timeseries_panel(
            "Requests running and waiting",
            "Per pod: requests decoding now (qwen_chat_requests_running, at most MAX_RUNNING per worker) "
            "and requests queued for a slot (qwen_chat_requests_waiting, at most MAX_WAITING per worker, "
            "then 503 / overloaded). A queue that stays up means the pod needs more replicas.",
            [
                target(sum_by(("pod",), series("requests_running")), "{{pod}} running"),
                target(sum_by(("pod",), series("requests_waiting")), "{{pod}} waiting"),
            ],
            unit="short",
            thresholds=WAITING,
            decimals=0,
        ),
        timeseries_panel(
            "Request rate by transport and outcome",
            "Chat requests per second (qwen_chat_requests_total) by transport (ws, http = /chat, sse = "
            "/chat_stream, openai = /v1/chat/completions, /v1/completions and /v1/responses) and outcome "
            "(stop, length, cancelled, timeout: cut at its deadline, error, rejected, rate_limited).",
            [rate_by("requests_total", "transport", "outcome")],
            unit="reqps",
        ),
    ]


def latency() -> list[Panel]:
    return [
        timeseries_panel(
            "Time to first token",
            "From receiving a chat to sending its first token, as the client feels it (queue wait plus "
            "prefill): p50, p95 and p99 over the selected pods. Dashed lines: 1 s warning, 2 s the "
            "default alert bound (monitoring.prometheusRule.ttftP95Seconds).",
            percentiles("time_to_first_token_seconds", 0.5, 0.95, 0.99),
            unit="s",
            thresholds=TTFT,
            dashed=True,
        ),
        timeseries_panel(
            "Inter-token latency",
            "Time between two token messages sent to a client (qwen_chat_inter_token_latency_seconds): "
            "p50, p95 and p99. Above 100 ms (10 tokens/s) streaming feels slow to a reader.",
            percentiles("inter_token_latency_seconds", 0.5, 0.95, 0.99),
            unit="s",
            thresholds=steps("green", (0.1, "orange"), (0.25, "red")),
            dashed=True,
        ),
        timeseries_panel(
            "Queue wait and request duration",
            "How long accepted requests waited for a decoding slot (qwen_chat_request_queue_seconds) and "
            "took end to end (qwen_chat_request_duration_seconds), p50 and p95. Queue wait above a second "
            "means the batch is full: add replicas.",
            percentiles("request_queue_seconds", name="queue")
            + percentiles("request_duration_seconds", name="duration"),
            unit="s",
            thresholds=steps("green", (1, "orange"), (5, "red")),
        ),
    ]
