"""The endpoint picker's gauges: vLLM's names, derived from ours in the same scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qwen_chat.metrics.model_server_protocol import WithAliases


def scrape(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(WithAliases(registry)).decode()
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def ours(registry: CollectorRegistry) -> dict[str, Gauge]:
    names = {
        "waiting": "requests_waiting",
        "running": "requests_running",
        "usage": "kv_cache_usage_ratio",
        "pages": "kv_cache_pages",
        "page_size": "kv_cache_page_size_tokens",
    }
    return {
        key: Gauge(name, name, ["model"], namespace="qwen_chat", registry=registry)
        for key, name in names.items()
    }


def test_each_protocol_gauge_carries_our_value_under_vllms_name_and_label() -> None:
    registry = CollectorRegistry()
    gauges = ours(registry)
    for model, values in {"qwen": (3, 16, 0.25, 1024, 32), "other": (0, 1, 0.0, 0, 0)}.items():
        for key, value in zip(("waiting", "running", "usage", "pages", "page_size"), values, strict=True):
            gauges[key].labels(model).set(value)
    families = scrape(registry)
    assert families["vllm:num_requests_waiting"] == [
        ({"model_name": "qwen"}, 3),
        ({"model_name": "other"}, 0),
    ]
    assert families["vllm:num_requests_running"] == [
        ({"model_name": "qwen"}, 16),
        ({"model_name": "other"}, 1),
    ]
    assert families["vllm:kv_cache_usage_perc"] == [
        ({"model_name": "qwen"}, 0.25),
        ({"model_name": "other"}, 0.0),
    ]
    # The info gauge is for a paged cache only: the model without one has none.
    assert families["vllm:cache_config_info"] == [
        ({"model_name": "qwen", "block_size": "32", "num_gpu_blocks": "1024"}, 1.0)
    ]
    assert families["qwen_chat_requests_waiting"] == [({"model": "qwen"}, 3), ({"model": "other"}, 0)]


def test_no_alias_without_its_source() -> None:
    registry = CollectorRegistry()
    Gauge("unrelated", "x", registry=registry).set(1)
    assert set(scrape(registry)) == {"unrelated"}
