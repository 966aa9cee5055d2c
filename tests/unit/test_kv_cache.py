"""How much the batch engine holds, from settings: slots, the KV cache's pages and page size, tokens per step."""

from __future__ import annotations

import math
from types import SimpleNamespace

from qwen_chat.engine.core.kv_cache import CPU_CACHE_TOKENS, cache_geometry, pages_for, running_slots
from qwen_chat.engine.hf_internals import held_share
from qwen_chat.settings import Settings


def test_out_of_the_box_many_sequences_decode_at_once() -> None:
    assert running_slots(Settings(), "cuda") >= 64
    assert running_slots(Settings(), "cpu") == 16
    assert running_slots(Settings(max_running=3), "cuda") == 3
    # The simple engine's slots are `generate` calls with a cache each: few by default.
    assert running_slots(Settings(engine="simple"), "cuda") == 4


def test_on_cuda_the_manager_sizes_the_cache_from_free_memory() -> None:
    geometry = cache_geometry(Settings(), context_length=32768, budget=30000, device_type="cuda")
    assert geometry.num_blocks is None and geometry.memory_fraction == 0.8
    assert geometry.longest_request == 30000 + 512  # what the engine checks the manager's cache against
    assert (geometry.page_size, geometry.max_batch_tokens) == (256, 8192)  # transformers' own on a GPU
    fraction = cache_geometry(Settings(kv_cache_memory_fraction=0.5), 32768, 30000, "cuda")
    assert fraction.memory_fraction == 0.5


def test_on_cuda_the_decode_kernels_block_table_fits_the_longest_admitted_request() -> None:
    geometry = cache_geometry(Settings(), context_length=32768, budget=30000, device_type="cuda")
    # 30,512 tokens are 120 pages of 256; one more for a page a request straddles, even: 122.
    assert geometry.pages_per_request == 122 and geometry.pages_per_request * 256 >= geometry.longest_request
    assert pages_for(256, 256) == 2 and pages_for(257, 256) == 4
    short = cache_geometry(Settings(), context_length=4096, budget=3584, device_type="cuda")
    assert short.pages_per_request == 18  # 4,096 tokens: 16 pages, 17, even
    chosen = cache_geometry(Settings(kv_pages_per_request=64, max_batch_tokens=4096), 32768, 30000, "cuda")
    assert (chosen.pages_per_request, chosen.max_batch_tokens) == (64, 4096)
    # On CPU there is no such kernel: the manager is told nothing, and leaves the path off.
    assert cache_geometry(Settings(), 32768, 30000, "cpu").pages_per_request is None


def test_on_cpu_the_cache_is_a_token_budget_not_max_running_times_the_context() -> None:
    settings = Settings(max_running=64, max_new_tokens=512)
    geometry = cache_geometry(settings, context_length=32768, budget=30000, device_type="cpu")
    assert geometry.memory_fraction is None and (geometry.page_size, geometry.max_batch_tokens) == (32, 512)
    # The longest admitted request (32,768 tokens here) fits, with the manager's 15% headroom.
    assert geometry.num_blocks == math.ceil(32768 * 1.2 / 32) + 1
    small_model = cache_geometry(settings, context_length=2048, budget=1536, device_type="cpu")
    assert small_model.num_blocks == math.ceil(CPU_CACHE_TOKENS * 1.2 / 32) + 1


def test_kv_cache_tokens_fixes_the_size_on_either_device_but_never_below_one_whole_request() -> None:
    settings = Settings(kv_cache_tokens=100_000, kv_page_size=64, max_batch_tokens=256)
    for device in ("cpu", "cuda"):
        geometry = cache_geometry(settings, context_length=2048, budget=1024, device_type=device)
        assert (geometry.page_size, geometry.max_batch_tokens) == (64, 256)
        assert geometry.num_blocks == math.ceil(100_000 * 1.2 / 64) + 1 and geometry.memory_fraction is None
    too_small = cache_geometry(Settings(kv_cache_tokens=10), 2048, 1024, "cpu")
    assert too_small.tokens is not None and too_small.tokens >= 1024 + 512


def test_cache_use_counts_the_pages_live_requests_hold_and_shared_pages_once() -> None:
    """A stand-in of transformers' paged cache (its allocators' block tables): pages the manager keeps only as
    a prefix cache are in no request's table, so they count as free."""
    allocator = SimpleNamespace(block_table={"a": [0, 1, 2], "b": [0, 1, 7]}, bytes_per_block=2)
    cache = SimpleNamespace(cache_allocators={"full": allocator}, num_sectors=20, bytes_per_sector=2)
    manager = SimpleNamespace(batch_processor=SimpleNamespace(cache=cache))
    assert held_share(manager) == 4 / 20
    allocator.block_table = {}
    assert held_share(manager) == 0
    assert held_share(SimpleNamespace()) == -1, "before the manager's thread built its cache"
