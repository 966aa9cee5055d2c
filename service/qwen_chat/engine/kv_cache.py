"""How large the batch engine's KV cache is: pages, page size and tokens per forward pass, from settings."""

from __future__ import annotations

import math
from dataclasses import dataclass

from qwen_chat.settings import Settings


@dataclass(frozen=True)
class CacheGeometry:
    num_blocks: int
    page_size: int
    max_batch_tokens: int

    @property
    def tokens(self) -> int:
        return self.num_blocks * self.page_size


def cache_geometry(settings: Settings, context_length: int, budget: int, device_type: str) -> CacheGeometry:
    """Pages, page size and batch tokens for `ContinuousBatchingConfig`, on a `cuda` or `cpu` device.

    The cache holds at least one request of the longest admitted size (prompt budget plus MAX_NEW_TOKENS):
    a request larger than the whole cache would stop the manager. By default it holds MAX_RUNNING such
    requests, capped at KV_CACHE_TOKENS when that is set; requests that outgrow a full cache are paused
    and resumed by the manager, never lost.
    """
    cuda = device_type == "cuda"
    page_size = settings.kv_page_size or (256 if cuda else 32)
    longest = min(context_length, budget + settings.max_new_tokens)
    wanted = settings.kv_cache_tokens or settings.max_running * longest
    tokens = max(longest, wanted)
    # The manager holds back new prefills when less than 15% of the cache is free: leave that headroom.
    num_blocks = math.ceil(tokens * 1.2 / page_size) + 1
    max_batch_tokens = settings.max_batch_tokens or (2048 if cuda else 512)
    return CacheGeometry(num_blocks, page_size, max_batch_tokens)
