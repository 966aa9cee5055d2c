"""The pod speaks for all its engines (`runtime/pod_blocks.py`): a block is announced by the first engine to
hold it and removed by the last to drop it, runs of blocks new to the pod keep their chain, and an engine
that ended removes only what it alone held."""

from __future__ import annotations

import os
import subprocess
import sys

from qwen_chat.engine.block_events import Cleared, Removed, Stored
from qwen_chat.runtime.kv_events import started_at
from qwen_chat.runtime.pod_blocks import BlockRemoved, BlockStored, PodBlocks, block_key

A, B = 101, 202  # two engine processes
SIZE = 2


def _tokens(*blocks: int) -> list[int]:
    return [token for block in blocks for token in (block * 10, block * 10 + 1)]


def _stored(*hashes: int, parent: int | None = None) -> Stored:
    return Stored(list(hashes), parent, _tokens(*hashes), SIZE)


def _keys(*hashes: int) -> list[bytes]:
    return [block_key(h) for h in hashes]


def test_a_block_is_announced_once_and_removed_with_its_last_holder() -> None:
    pod = PodBlocks()
    assert pod.apply(A, _stored(1, 2)) == [BlockStored(_keys(1, 2), None, _tokens(1, 2), SIZE)]
    assert pod.apply(B, _stored(1, 2)) == [], "the pod holds them already"
    assert pod.apply(A, Removed([1, 2])) == [], "B still holds them"
    assert pod.apply(B, Removed([2])) == [BlockRemoved(_keys(2))]
    assert pod.apply(B, Removed([2])) == [], "removed twice is removed once"
    assert len(pod) == 1


def test_only_the_runs_new_to_the_pod_are_announced_each_with_its_parent() -> None:
    pod = PodBlocks()
    pod.apply(A, _stored(1, 2, 3))
    assert pod.apply(A, Removed([2])) == [BlockRemoved(_keys(2))]  # its page went; 3 stayed
    events = pod.apply(B, _stored(1, 2, 3, 4))
    assert events == [
        BlockStored(_keys(2), block_key(1), _tokens(2), SIZE),
        BlockStored(_keys(4), block_key(3), _tokens(4), SIZE),
    ]


def test_a_block_whose_parent_was_never_announced_waits_and_is_never_removed_unannounced() -> None:
    pod = PodBlocks()
    assert pod.apply(A, _stored(8, 9, parent=7)) == [], "a subscriber could not chain it"
    assert pod.apply(A, Removed([9])) == [], "nor hear of it going"
    assert pod.apply(B, _stored(7)) == [BlockStored(_keys(7), None, _tokens(7), SIZE)]
    assert pod.apply(B, _stored(7, 8)) == [BlockStored(_keys(8), block_key(7), _tokens(8), SIZE)]
    assert pod.forget_all() == [BlockRemoved(_keys(7, 8))] and len(pod) == 0


def test_an_engine_that_ended_or_cleared_removes_only_what_it_alone_held() -> None:
    pod = PodBlocks()
    pod.apply(A, _stored(1, 2, 3))
    pod.apply(B, _stored(1, 2))
    assert pod.sources == {A, B}
    assert pod.forget(A) == [BlockRemoved(_keys(3))]
    assert pod.apply(A, _stored(7)) == [], "what an ended engine pushed before it ended is ignored"
    assert pod.apply(A, Cleared()) == [] and pod.apply(A, _stored(7)) != [], "a new engine with a reused pid"
    assert pod.apply(B, Cleared()) == [BlockRemoved(_keys(1, 2))]
    assert len(pod) == 1 and pod.sources == {A}, "only the new engine's block is left"


def test_removing_what_was_never_announced_says_nothing() -> None:
    assert PodBlocks().apply(A, Removed([9])) == []


def test_hashes_are_eight_big_endian_bytes() -> None:
    assert block_key(1) == b"\0" * 7 + b"\1" and block_key(2**64 - 1) == b"\xff" * 8


def test_a_process_start_time_tells_a_live_process_from_an_ended_one() -> None:
    assert started_at(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert started_at(child.pid) is None
