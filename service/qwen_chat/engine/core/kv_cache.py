"""How much the batch engine holds: decoding slots, the KV cache's pages and page size, tokens per step.

The cache is sized from memory, and MAX_RUNNING only bounds the batch:
- on CUDA, transformers' manager gives the cache KV_CACHE_MEMORY_FRACTION of the device memory still free
  once the weights are loaded (its `max_memory_percent`, in the spirit of vLLM's `gpu_memory_utilization`);
- on CPU, where the cache shares RAM with everything else, it holds a token budget (KV_CACHE_TOKENS, by
  default `CPU_CACHE_TOKENS`).
KV_CACHE_TOKENS set on either device fixes the size instead. The cache always holds at least one request of
the longest admitted size (a request larger than the whole cache would stop the manager); requests that
outgrow a full cache together are paused and re-prefilled by the manager, never lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qwen_chat.settings import Settings

# Decoding slots when MAX_RUNNING is 0: a GPU decodes many sequences for the price of one (each step reads
# the weights once); on CPU, 16 rows already make a step of a 0.5B model as much compute as memory traffic.
DEFAULT_MAX_RUNNING = {"cuda": 128, "cpu": 16}
# The CPU cache when KV_CACHE_TOKENS is 0: 16 conversations of 2,048 tokens (0.8 GB for the 0.5B shape in
# float32, 0.9 GB for the 1.5B shape in bfloat16).
CPU_CACHE_TOKENS = 32_768


# The simple engine runs one `generate` per slot, each with a KV cache of its own: few slots.
SIMPLE_MAX_RUNNING = 4


def running_slots(settings: Settings, device_type: str) -> int:
    """MAX_RUNNING, or the default for the engine and device when it is 0."""
    if settings.max_running:
        return settings.max_running
    if settings.engine == "simple":
        return SIMPLE_MAX_RUNNING
    return DEFAULT_MAX_RUNNING.get(device_type, DEFAULT_MAX_RUNNING["cpu"])


# Tokens one step may take in (prefill chunks and decode rows) when MAX_BATCH_TOKENS is 0: transformers' own
# figure on a GPU, where a bigger step costs little more than a small one; on CPU a step's time grows with its
# tokens, and 512 keeps a long prefill from stalling the decoding rows beside it for long.
DEFAULT_BATCH_TOKENS = {"cuda": 8192, "cpu": 512}


def batch_tokens(settings: Settings, device_type: str) -> int:
    """MAX_BATCH_TOKENS, or the device's default when it is 0."""
    return settings.max_batch_tokens or DEFAULT_BATCH_TOKENS.get(device_type, DEFAULT_BATCH_TOKENS["cpu"])


@dataclass(frozen=True)
class CacheGeometry:
    num_blocks: int | None  # None: the manager sizes the cache from free device memory
    page_size: int
    max_batch_tokens: int
    memory_fraction: float | None
    longest_request: int  # prompt budget plus MAX_NEW_TOKENS, within the context: the cache must hold one
    # The block table of the decode kernel (flash attention's `flash_attn_with_kvcache`) on CUDA: pages enough
    # for the longest admitted request. None on CPU, where that kernel never runs.
    pages_per_request: int | None = None

    @property
    def tokens(self) -> int | None:
        return None if self.num_blocks is None else self.num_blocks * self.page_size


def cache_geometry(settings: Settings, context_length: int, budget: int, device_type: str) -> CacheGeometry:
    """What `ContinuousBatchingConfig` gets on a `cuda` or `cpu` device, for prompts up to `budget` tokens."""
    cuda = device_type == "cuda"
    page_size = settings.kv_page_size or (256 if cuda else 32)
    max_batch_tokens = batch_tokens(settings, device_type)
    longest = min(context_length, budget + settings.max_new_tokens)
    pages = (settings.kv_pages_per_request or pages_for(longest, page_size)) if cuda else None
    if cuda and not settings.kv_cache_tokens:
        fraction = settings.kv_cache_memory_fraction
        return CacheGeometry(None, page_size, max_batch_tokens, fraction, longest, pages)
    tokens = max(longest, settings.kv_cache_tokens or CPU_CACHE_TOKENS)
    # The manager holds back new prefills when less than 15% of the cache is free: leave that headroom.
    num_blocks = math.ceil(tokens * 1.2 / page_size) + 1
    return CacheGeometry(num_blocks, page_size, max_batch_tokens, None, longest, pages)


def pages_for(tokens: int, page_size: int) -> int:
    """The block table's width for requests of up to `tokens`: their pages, one more for a page a request
    straddles, rounded up to even (transformers' own rule for the width it derives)."""
    pages = math.ceil(tokens / page_size) + 1
    return pages + pages % 2
