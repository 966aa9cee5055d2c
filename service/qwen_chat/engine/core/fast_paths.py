"""Which of transformers' fast paths the batch engine runs with, as its manager resolved them, and with which
attention: said once at start (the log, `ModelFacts`, the `engine_info` series), so an operator can tell a
GPU pod that runs the slow way from one that does not.

- `cuda_graphs`: the forward replayed as a CUDA graph (on the prefill or the decode path);
- `async_batching`: the next step prepared on the CPU while the GPU runs this one;
- `decode_kernel`: flash attention's paged decode kernel (`flash_attn_with_kvcache`), which needs a flash
  attention implementation on CUDA and a block table wide enough for a request (`kv_cache.pages_for`).

`QWEN_CHAT_CUDA_GRAPHS` sets the first (`auto`: transformers' choice), the second follows transformers'
default; steps that need the host run without either (`core/batch_sampler.py`). On CPU none of the three
exists.
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger(__name__)

NAMES = ("cuda_graphs", "async_batching", "decode_kernel")


def running(manager: Any) -> list[str]:
    """The fast paths `manager` resolved to run, in `NAMES`' order."""
    config = manager.continuous_batching_config  # resolved by the manager: booleans and a block table width
    graphs = config.use_cuda_graph  # a pair (prefill path, decode path) once resolved
    on = {
        "cuda_graphs": any(graphs) if isinstance(graphs, tuple) else bool(graphs),
        "async_batching": bool(config.use_async_batching),
        "decode_kernel": bool(config.max_blocks_per_request),
    }
    return [name for name in NAMES if on[name]]


def warn_if_slow(device_type: str, attention_name: str) -> None:
    """A GPU without flash attention runs without the decode kernel, and transformers turns graphs and async
    batching on only with it: loud, once, at start."""
    if device_type == "cuda" and "flash" not in attention_name:
        log.warning(
            "gpu_without_flash_attention",
            attention=attention_name,
            consequence="no decode kernel; CUDA graphs and async batching only with QWEN_CHAT_CUDA_GRAPHS=on",
            fix="install flash-attn (or the `kernels` package with a local flash kernel) in the image",
        )
