"""On CPU, the batch engine's attention one request at a time instead of one masked product over the batch.

transformers' manager runs SDPA over the whole step at once: the queries of every request against the keys
of every request, concatenated, with a block-diagonal mask. That costs (all queries) x (all keys): with 16
requests of 1,000 cached tokens each, a decode step computes 16 x 16,000 scores per head where 16 x 1,000
are wanted, and with grouped-query attention transformers first copies the keys and values once per query
head group (`repeat_kv`). On a GPU that waste hides in spare compute; on a CPU it is most of the step once
conversations have history (a 16-client chat on the tiny model spent about half its time there).

`per_request_sdpa` replaces the registered `sdpa` attention: for a continuous-batching step on CPU with
more than one request, it runs SDPA per request over that request's own keys (its block of the manager's
mask for a prefill chunk; no mask for a single decode token), with `enable_gqa` instead of the copy. Every
other call (`generate`, one request, CUDA) goes to transformers' own function unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional

from qwen_chat.engine import hf_internals
from qwen_chat.engine.hf_internals import sdpa_attention_forward


def install() -> None:
    """Register `per_request_sdpa` as the `sdpa` attention of every model in this process (idempotent)."""
    hf_internals.register_attention("sdpa", per_request_sdpa)


def per_request_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    bounds = _request_bounds(module, query, kwargs)
    if bounds is None:
        forward: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return forward
    q_bounds, k_bounds = bounds
    if isinstance(attention_mask, dict):
        attention_mask = attention_mask[getattr(module, "layer_type", "full_attention")]
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    windowed = kwargs.get("sliding_window") is not None  # then even one decode token needs its mask row
    out = torch.zeros_like(query)  # [1, heads, queries, head_dim]; rows of no request stay 0
    for q_start, q_end, k_start, k_end in zip(q_bounds, q_bounds[1:], k_bounds, k_bounds[1:], strict=False):
        if q_end == q_start:
            continue
        mask = None
        if attention_mask is not None and (q_end - q_start > 1 or windowed):
            mask = attention_mask[..., q_start:q_end, k_start:k_end]
        out[:, :, q_start:q_end] = functional.scaled_dot_product_attention(
            query[:, :, q_start:q_end],
            key[:, :, k_start:k_end],
            value[:, :, k_start:k_end],
            attn_mask=mask,
            scale=scaling,
            enable_gqa=grouped,
        )
    return out.transpose(1, 2).contiguous(), None


def _request_bounds(
    module: torch.nn.Module, query: torch.Tensor, kwargs: dict[str, Any]
) -> tuple[list[int], list[int]] | None:
    """Each request's query and key boundaries in a continuous-batching step on CPU, else None."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if query.device.type != "cpu" or cu_q is None or cu_k is None or query.shape[0] != 1:
        return None
    if isinstance(cu_k, dict):
        cu_k = cu_k.get(getattr(module, "layer_type", "full_attention"))
        if cu_k is None:
            return None
    q_bounds, k_bounds = cu_q.tolist(), cu_k.tolist()
    if len(q_bounds) < 3 or len(q_bounds) != len(k_bounds):  # one request: its mask is the whole step's
        return None
    return q_bounds, k_bounds
