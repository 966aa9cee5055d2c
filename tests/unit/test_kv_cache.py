"""The batch engine's KV cache size, from settings: pages, page size and tokens per step."""

from __future__ import annotations

import math

from qwen_chat.engine.kv_cache import cache_geometry
from qwen_chat.settings import Settings


def test_default_cache_holds_max_running_requests_of_the_longest_admitted_size_with_headroom() -> None:
    settings = Settings(max_running=4, max_new_tokens=512)
    geometry = cache_geometry(settings, context_length=32768, budget=1536, device_type="cpu")
    assert geometry.page_size == 32 and geometry.max_batch_tokens == 512
    longest = 1536 + 512
    assert geometry.num_blocks == math.ceil(4 * longest * 1.2 / 32) + 1
    assert geometry.tokens >= 4 * longest * 1.2


def test_cuda_uses_larger_pages_and_steps() -> None:
    geometry = cache_geometry(Settings(), context_length=4096, budget=1024, device_type="cuda")
    assert (geometry.page_size, geometry.max_batch_tokens) == (256, 2048)


def test_longest_request_is_capped_by_the_context() -> None:
    settings = Settings(max_running=1, max_new_tokens=512)
    geometry = cache_geometry(settings, context_length=1024, budget=1024, device_type="cpu")
    assert geometry.num_blocks == math.ceil(1024 * 1.2 / 32) + 1


def test_kv_cache_tokens_sets_the_size_but_never_below_one_whole_request() -> None:
    settings = Settings(kv_cache_tokens=100_000, kv_page_size=64, max_batch_tokens=256)
    geometry = cache_geometry(settings, context_length=2048, budget=1024, device_type="cpu")
    assert (geometry.page_size, geometry.max_batch_tokens) == (64, 256)
    assert geometry.num_blocks == math.ceil(100_000 * 1.2 / 64) + 1
    too_small = cache_geometry(Settings(kv_cache_tokens=10), 2048, 1024, "cpu")
    assert too_small.tokens >= 1024 + 512
