"""The pod-wide SQLite rate-limit storage, which every gunicorn worker opens at the same moment."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from qwen_chat.chat.rate_limit import SQLiteStorage

PROCESSES = 8


def _open_and_count(path: str, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=30)
    try:
        storage = SQLiteStorage(f"sqlite://{path}")
        results.put(storage.incr("user", expiry=60))
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_workers_opening_a_new_storage_at_once_all_start_and_share_the_counter(tmp_path: Path) -> None:
    # Workers fork together and open the same new file: switching it to WAL needs a lock that SQLite's
    # busy timeout does not wait for, and a worker that failed here failed to boot, taking the pod down.
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    for attempt in range(3):
        path = tmp_path / f"rate-limit-{attempt}.sqlite"
        barrier = context.Barrier(PROCESSES)
        procs = [
            context.Process(target=_open_and_count, args=(str(path), barrier, results))
            for _ in range(PROCESSES)
        ]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        assert sorted(outcomes, key=str) == list(range(1, PROCESSES + 1)), outcomes


def test_counts_expire_and_are_shared_between_handles(tmp_path: Path) -> None:
    uri = f"sqlite://{tmp_path / 'limits.sqlite'}"
    first, second = SQLiteStorage(uri), SQLiteStorage(uri)
    assert first.incr("alice", expiry=60) == 1
    assert second.incr("alice", expiry=60) == 2
    assert first.get("alice") == 2 and first.get("bob") == 0
    assert second.incr("bob", expiry=0) == 1
    assert first.get("bob") == 0  # expired at once
    first.clear("alice")
    assert second.get("alice") == 0
