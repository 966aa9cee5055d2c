"""The model-server protocol of the Gateway API Inference Extension, under the names its endpoint picker
reads by default: vLLM's.

The picker (llm-d's router) scrapes each pod's `/metrics` and scores pods by queued requests, running
requests and KV cache use; a pod whose gauges are missing counts as saturated. Its default engine mapping
is vLLM's, so these series carry vLLM's names and its `model_name` label, and a qwen-chat pod is routed
with no `engineConfigs` entry and no pod label (docs/scale-out.md says why this over a custom mapping).

They are not recorded twice: `aliases` derives them, at each scrape, from the `qwen_chat_` series they mean
(already merged over the gunicorn workers), so the two names can never disagree:

- TotalQueuedRequests: `vllm:num_requests_waiting`, from `qwen_chat_requests_waiting` (sum over workers);
- TotalRunningRequests: `vllm:num_requests_running`, from `qwen_chat_requests_running` (sum over workers);
- KVCacheUtilization: `vllm:kv_cache_usage_perc` (0-1), from `qwen_chat_kv_cache_usage_ratio` (the fullest
  worker's);
- BlockSize, NumGPUBlocks: `vllm:cache_config_info{block_size, num_gpu_blocks}` = 1, from
  `qwen_chat_kv_cache_page_size_tokens` and `qwen_chat_kv_cache_pages` (pages over all workers);
- the prefix cache's hit signal: the counters `vllm:prefix_cache_queries_total` and
  `vllm:prefix_cache_hits_total` (prompt tokens looked up, and found), from `qwen_chat_prefix_cache_queries`
  and `qwen_chat_prefix_cache_hits` (sums over workers).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LABEL = "model_name"
# vLLM's gauge: the qwen_chat_ gauge it is read from, and its help text.
_GAUGES = {
    "vllm:num_requests_waiting": (
        "qwen_chat_requests_waiting",
        "Requests waiting for a decoding slot (qwen_chat_requests_waiting).",
    ),
    "vllm:num_requests_running": (
        "qwen_chat_requests_running",
        "Requests decoding now (qwen_chat_requests_running).",
    ),
    "vllm:kv_cache_usage_perc": (
        "qwen_chat_kv_cache_usage_ratio",
        "KV cache usage, 1 means 100 percent (qwen_chat_kv_cache_usage_ratio).",
    ),
}
# vLLM's counter (without `_total`): the qwen_chat_ counter it is read from, and its help text.
_COUNTERS = {
    "vllm:prefix_cache_queries": (
        "qwen_chat_prefix_cache_queries",
        "Prompt tokens looked up in the prefix cache (qwen_chat_prefix_cache_queries_total).",
    ),
    "vllm:prefix_cache_hits": (
        "qwen_chat_prefix_cache_hits",
        "Prompt tokens found in the prefix cache (qwen_chat_prefix_cache_hits_total).",
    ),
}
_PAGES = "qwen_chat_kv_cache_pages"
_PAGE_SIZE = "qwen_chat_kv_cache_page_size_tokens"
CACHE_CONFIG = "vllm:cache_config_info"


def _by_model(family: Any) -> dict[str, float]:
    """A gauge's value per `model` label (a gauge merged over workers has one sample per model)."""
    values: dict[str, float] = {}
    for sample in family.samples:
        model = sample.labels.get("model")
        if model is not None:
            values[model] = max(values.get(model, sample.value), sample.value)
    return values


def _totals(family: Any) -> dict[str, float]:
    """A counter's total per `model` label, summed over its samples (one per worker, unless merged)."""
    totals: dict[str, float] = {}
    for sample in family.samples:
        model = sample.labels.get("model")
        if model is not None and sample.name.endswith("_total"):
            totals[model] = totals.get(model, 0.0) + sample.value
    return totals


def aliases(families: Iterable[Any]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """vLLM's series for the qwen_chat_ gauges and counters among `families` (one scrape's, collected)."""
    by_name = {family.name: family for family in families}
    for name, (source, documentation) in _COUNTERS.items():
        if source in by_name:
            counter = CounterMetricFamily(name, documentation, labels=[LABEL])
            for model, value in _totals(by_name[source]).items():
                counter.add_metric([model], value)
            yield counter
    for name, (source, documentation) in _GAUGES.items():
        if source in by_name:
            gauge = GaugeMetricFamily(name, documentation, labels=[LABEL])
            for model, value in _by_model(by_name[source]).items():
                gauge.add_metric([model], value)
            yield gauge
    if _PAGES in by_name and _PAGE_SIZE in by_name:
        pages, page_size = _by_model(by_name[_PAGES]), _by_model(by_name[_PAGE_SIZE])
        info = GaugeMetricFamily(
            CACHE_CONFIG,
            "The KV cache's geometry: tokens per page (block_size) and pages over all workers.",
            labels=[LABEL, "block_size", "num_gpu_blocks"],
        )
        for model, count in pages.items():
            if count > 0 and page_size.get(model, 0) > 0:  # the simple engine has no paged cache
                info.add_metric([model, str(int(page_size[model])), str(int(count))], 1.0)
        yield info


class WithAliases:
    """A collector: every family of `source`, then their vLLM aliases (what `/metrics` exposes)."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        families = list(self._source.collect())
        yield from families
        yield from aliases(families)
