"""Which prefix-cache blocks the manager's KV cache holds, followed where its full-attention allocator's
`BlockLedger` gives a block a content hash and takes it away (part of `hf_internals`). The pod's KV-cache
events are made from this (`engine/block_events.py`).

- A block is stored when `mark_complete_blocks` registers its hash (`ledger.register_new_hash` answers
  None): its tokens are the request's `tokens_per_page` tokens at that place in its block table, and its
  parent is the hash before it. A duplicate answers the block that already holds that hash, so it stores
  nothing.
- A block is removed when eviction frees the unreferenced hashed blocks in bulk
  (`ledger.evict_cached_blocks`), or when a release with `no_cache` (a request paused for lack of room)
  drops the hash of a block nobody else references (`ledger.release`).
- `ledger.reset` (the cache reset after warm-up, or a new generation loop) drops every hash."""

from __future__ import annotations

from typing import Any, Protocol

_FOLLOWED = "_qwen_chat_blocks_followed"  # set on a cache whose ledger we wrapped

# What the allocator and its ledger must have (checked at start by `check_manager`).
ALLOCATOR_PATHS = (
    "use_block_sharing",
    "tokens_per_page",
    "block_table",
    "mark_complete_blocks",
    "ledger.register_new_hash",
    "ledger.release",
    "ledger.evict_cached_blocks",
    "ledger.reset",
    "ledger.block_to_hash",
    "ledger.cached_blocks",
)


class BlockSink(Protocol):
    def stored(self, hashes: list[int], parent: int | None, tokens: list[int], block_size: int) -> None: ...

    def removed(self, hashes: list[int]) -> None: ...

    def cleared(self) -> None: ...


def follow_blocks(manager: Any, sink: BlockSink) -> str | None:
    """Tell `sink` each block the manager's cache stores and removes (on the manager's thread), starting
    with `cleared`: a new cache holds nothing. Idempotent per cache. Answers why nothing can be followed
    (None when followed): the cache shares no prefixes, or more than one of its allocators does (their
    blocks would not be one chain of hashes)."""
    cache = getattr(getattr(manager, "batch_processor", None), "cache", None)
    if cache is None or getattr(cache, _FOLLOWED, False):
        return None
    setattr(cache, _FOLLOWED, True)
    sharing = [allocator for allocator in cache.cache_allocators.values() if allocator.use_block_sharing]
    if not getattr(cache, "use_prefix_sharing", False) or len(sharing) != 1:
        return "this model's cache shares no prefix blocks, or shares them in more than one attention group"
    allocator = sharing[0]
    sink.cleared()
    _follow_stores(allocator, sink)
    _follow_removals(allocator.ledger, sink)
    return None


def _follow_stores(allocator: Any, sink: BlockSink) -> None:
    ledger = allocator.ledger
    register, mark = ledger.register_new_hash, allocator.mark_complete_blocks
    registered: list[int] = []  # hashes new to the ledger during one `mark_complete_blocks`

    def register_new_hash(block_id: int, block_hash: int) -> int | None:
        existing: int | None = register(block_id, block_hash)
        if existing is None:
            registered.append(block_hash)
        return existing

    def mark_complete_blocks(request_id: str, token_ids: list[int], new_new_blocks: int) -> None:
        registered.clear()
        mark(request_id, token_ids, new_new_blocks)
        if not registered:
            return
        size = allocator.tokens_per_page
        new = set(registered)
        chain = [ledger.block_to_hash.get(block) for block in allocator.block_table.get(request_id, [])]
        for first, last in _runs([i for i, block_hash in enumerate(chain) if block_hash in new]):
            hashes = [h for h in chain[first : last + 1] if h is not None]
            parent = chain[first - 1] if first else None
            sink.stored(hashes, parent, list(token_ids[first * size : (last + 1) * size]), size)

    ledger.register_new_hash = register_new_hash
    allocator.mark_complete_blocks = mark_complete_blocks


def _follow_removals(ledger: Any, sink: BlockSink) -> None:
    release, evict, reset = ledger.release, ledger.evict_cached_blocks, ledger.reset

    def released(block_id: int, no_cache: bool = False) -> bool:
        block_hash = ledger.block_to_hash.get(block_id)
        freed = bool(release(block_id, no_cache))
        if block_hash is not None and block_id not in ledger.block_to_hash:
            sink.removed([block_hash])
        return freed

    def evicted() -> list[int]:
        known = ledger.block_to_hash
        hashes = [known[block] for block in ledger.cached_blocks if block in known]
        blocks: list[int] = evict()
        if hashes:
            sink.removed(hashes)
        return blocks

    def cleared() -> None:
        reset()
        sink.cleared()

    ledger.release = released
    ledger.evict_cached_blocks = evicted
    ledger.reset = cleared


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted indices, as (first, last) pairs."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs
