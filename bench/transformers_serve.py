"""The baseline server of `make bench`: `transformers serve --continuous-batching` on 127.0.0.1, started
and stopped with the launcher's pieces (bench/serving.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.serving import free_port, spawn, stop, wait_ok
from qwen_chat.engine.core.kv_cache import CPU_CACHE_TOKENS


def cache_pages(device: str) -> tuple[int, int]:
    """(blocks, page size) of its paged cache: as many tokens as our CPU cache holds, with its headroom, in
    pages of 256 tokens on CUDA and 32 on CPU."""
    page = 256 if device == "cuda" else 32
    return CPU_CACHE_TOKENS * 6 // 5 // page + 1, page


@contextmanager
def transformers_serve(
    model: str, work: Path, device: str, dtype: str, num_blocks: int, page: int
) -> Iterator[str]:
    """`transformers serve --continuous-batching` on 127.0.0.1; yields its base URL. Stopped by PID."""
    cache = work / "hf-hub-cache"  # it lists models from the hub cache, which must exist
    cache.mkdir(exist_ok=True)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    command = [
        str(Path(sys.executable).with_name("transformers")),
        "serve",
        model,
        "--continuous-batching",
        "--cb-num-blocks",
        str(num_blocks),
        "--cb-block-size",
        str(page),
        "--cb-max-batch-tokens",
        "512" if device == "cpu" else "2048",
        "--device",
        device,
        "--dtype",
        dtype,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = work / "transformers-serve.log"
    proc = spawn(command, env, log)
    try:
        wait_ok(f"http://127.0.0.1:{port}/health", proc, 300, f"transformers serve (see {log.name})")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, grace=30)
