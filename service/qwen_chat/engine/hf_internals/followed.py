"""What the manager does that the batch core counts, followed by wrapping the manager's own methods (part of
`hf_internals`): requests it pauses for lack of cache (preemptions) and what its prefix cache finds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_COUNTED = "_qwen_chat_counted"  # set on an offloading manager whose `offload_requests` we wrapped
_FOLLOWED = "_qwen_chat_followed"  # set on a cache whose `search_prefix_match` we wrapped


def count_preemptions(manager: Any, requeued: Callable[[int], None]) -> None:
    """Tell `requeued` how many requests each offload paused: the offloading manager requeues each one it
    frees the cache of, so the waiting list grows by that many inside `offload_requests`. Idempotent."""
    processor = getattr(manager, "batch_processor", None)
    offloading = getattr(processor, "offloading_manager", None)
    if offloading is None or getattr(offloading, _COUNTED, False):
        return
    scheduler = processor.scheduler  # type: ignore[union-attr]
    offload = offloading.offload_requests

    def counted() -> bool:
        before = len(scheduler.waiting_requests)
        result = offload()
        requeued(max(0, len(scheduler.waiting_requests) - before))
        return bool(result)

    offloading.offload_requests = counted
    setattr(offloading, _COUNTED, True)


def follow_prefix_hits(manager: Any, hit: Callable[[str, int], None]) -> None:
    """Tell `hit` how many prompt tokens each prefix-cache lookup of the manager's cache found
    (`cache.search_prefix_match`, wrapped, on the manager's thread). Idempotent."""
    cache = getattr(getattr(manager, "batch_processor", None), "cache", None)
    if cache is None or getattr(cache, _FOLLOWED, False):
        return
    search = cache.search_prefix_match

    def followed(request_id: str, prompt_ids: list[int]) -> int:
        found = int(search(request_id, prompt_ids))
        hit(request_id, found)
        return found

    cache.search_prefix_match = followed
    setattr(cache, _FOLLOWED, True)
