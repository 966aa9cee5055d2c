"""Which prefix-cache blocks a pod holds, from what each of its engine processes stores and removes
(`engine/block_events.py`): the pod speaks for all its workers. A block is announced when the first engine
holds it and removed when the last one drops it, so one engine's restart removes only what that engine
alone held. The pod never sends vLLM's `AllBlocksCleared` (a router would forget every worker's blocks, and
llm-d ignores it): when it stops, it removes each block it announced.

The events are vLLM's (`vllm/distributed/kv_events.py`), the format llm-d's precise prefix-cache scorer
reads; `runtime/kv_events.py` publishes them."""

from __future__ import annotations

from collections import defaultdict

import msgspec

from qwen_chat.engine.block_events import Cleared, Removed, Stored

# vLLM's `medium` for blocks in accelerator (or here, the engine's) memory.
MEDIUM = "GPU"


def block_key(block_hash: int) -> bytes:
    """A hash as the events carry it: its 8 bytes, big-endian, as vLLM sends a hash it does not shorten to
    an int. llm-d reads the same 64-bit value back from them, where a msgpack integer under 2**32 (packed
    in fewer bytes) would be refused with the whole batch."""
    return block_hash.to_bytes(8, "big")


class BlockStored(msgspec.Struct, array_like=True, gc=False, tag=True):
    block_hashes: list[bytes]
    parent_block_hash: bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = MEDIUM
    lora_name: str | None = None


class BlockRemoved(msgspec.Struct, array_like=True, gc=False, tag=True):
    block_hashes: list[bytes]
    medium: str | None = MEDIUM


Event = BlockStored | BlockRemoved


class PodBlocks:
    def __init__(self) -> None:
        self._holders: dict[int, set[int]] = {}  # block hash -> the engines (pids) holding it
        self._held: defaultdict[int, set[int]] = defaultdict(set)  # engine -> the hashes it holds
        self._announced: set[int] = set()  # hashes the subscribers were told of, and not told gone
        self._gone: set[int] = set()  # engines forgotten for good (their process ended)

    @property
    def sources(self) -> set[int]:
        """The engines that hold blocks."""
        return {source for source, hashes in self._held.items() if hashes}

    def __len__(self) -> int:
        return len(self._holders)

    def apply(self, source: int, change: Stored | Removed | Cleared) -> list[Event]:
        """The pod's events for one engine's change (none when other engines already hold, or still hold,
        its blocks). Changes of an engine forgotten by `forget` are ignored (they were pushed before it
        ended) until one starts over with `Cleared`."""
        if isinstance(change, Cleared):
            self._gone.discard(source)  # an engine's first push: a new process, though its pid may be reused
        elif source in self._gone:
            return []
        if isinstance(change, Stored):
            return self._stored(source, change)
        if isinstance(change, Removed):
            return self._removed(source, change.hashes)
        return self._removed(source, list(self._held.pop(source, ())))

    def forget(self, source: int) -> list[Event]:
        """An engine process ended: what it alone held is removed."""
        self._gone.add(source)
        return self._removed(source, list(self._held.pop(source, ())))

    def forget_all(self) -> list[Event]:
        """The publisher stops: every block it announced is gone as far as subscribers can tell."""
        removed = sorted(self._announced)
        self._holders.clear()
        self._held.clear()
        self._announced.clear()
        return [BlockRemoved([block_key(h) for h in removed])] if removed else []

    def _stored(self, source: int, change: Stored) -> list[Event]:
        """A block is announced once, and only after its parent: a subscriber rebuilds each block's key
        from its parent's, so a block whose parent it was never told of (an engine's changes were dropped,
        and it started over with `Cleared` while its cache kept the blocks) waits, unannounced, until some
        engine stores its parent again."""
        held = self._held[source]
        events: list[Event] = []
        run: list[int] = []  # consecutive positions announced now, as one event
        for index, block_hash in enumerate(change.hashes):
            self._holders.setdefault(block_hash, set()).add(source)
            held.add(block_hash)
            parent = change.hashes[index - 1] if index else change.parent
            if block_hash not in self._announced and (parent is None or parent in self._announced):
                self._announced.add(block_hash)
                run.append(index)
            elif run:
                events.append(self._event(change, run))
                run = []
        if run:
            events.append(self._event(change, run))
        return events

    @staticmethod
    def _event(change: Stored, run: list[int]) -> BlockStored:
        first, last, size = run[0], run[-1], change.block_size
        parent = change.hashes[first - 1] if first else change.parent
        hashes = [block_key(h) for h in change.hashes[first : last + 1]]
        tokens = change.tokens[first * size : (last + 1) * size]
        return BlockStored(hashes, None if parent is None else block_key(parent), tokens, size)

    def _removed(self, source: int, hashes: list[int]) -> list[Event]:
        held = self._held.get(source, set())
        removed = []
        for block_hash in hashes:
            holders = self._holders.get(block_hash)
            if holders is None or source not in holders:
                continue  # stored before this engine was followed, or already removed
            holders.discard(source)
            held.discard(block_hash)
            if not holders:
                del self._holders[block_hash]
                if block_hash in self._announced:
                    self._announced.discard(block_hash)
                    removed.append(block_hash)
        return [BlockRemoved([block_key(h) for h in removed])] if removed else []
