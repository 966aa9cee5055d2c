"""The batch engine's CPU attention, one request at a time, against transformers' masked SDPA over the step."""

from __future__ import annotations

import torch
from torch import nn
from transformers.generation.continuous_batching.utils import build_attention_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from qwen_chat.engine.core.cpu_attention import per_request_sdpa


class _Layer(nn.Module):
    num_key_value_groups = 3
    layer_type = "full_attention"
    is_causal = True


def test_per_request_attention_equals_the_masked_batch() -> None:
    torch.manual_seed(0)
    # A step of three requests: a prefill chunk of 5 tokens after 7 cached ones, and two decode tokens.
    q_lengths, k_lengths = [5, 1, 1], [12, 30, 9]
    cu_q = torch.tensor([0, *torch.tensor(q_lengths).cumsum(0).tolist()])
    cu_k = torch.tensor([0, *torch.tensor(k_lengths).cumsum(0).tolist()])
    query = torch.randn(1, 6, int(cu_q[-1]), 16)
    key, value = torch.randn(1, 2, int(cu_k[-1]), 16), torch.randn(1, 2, int(cu_k[-1]), 16)
    mask = torch.full(
        (1, 1, int(cu_q[-1]), int(cu_k[-1])), torch.finfo(torch.float32).min
    )  # as the manager resets it
    build_attention_mask(mask, cu_q.tolist(), cu_k.tolist())
    kwargs = {"cu_seq_lens_q": cu_q, "cu_seq_lens_k": {"full_attention": cu_k}}
    layer = _Layer()
    expected, _ = sdpa_attention_forward(layer, query, key, value, mask, scaling=0.25, **kwargs)
    ours, _ = per_request_sdpa(layer, query, key, value, mask, scaling=0.25, **kwargs)
    assert ours.shape == expected.shape
    assert torch.allclose(ours, expected, atol=1e-5)
    # Outside a batching step (generate's own calls) it is transformers' function itself.
    alone, _ = per_request_sdpa(layer, query[:, :, :5], key[:, :, :12], value[:, :, :12], mask[..., :5, :12])
    reference, _ = sdpa_attention_forward(
        layer, query[:, :, :5], key[:, :, :12], value[:, :, :12], mask[..., :5, :12]
    )
    assert torch.equal(alone, reference)
