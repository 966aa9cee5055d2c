"""Qwen v1's forward pass written from its published description (QWenLMHeadModel, 2023), on the original
tensor names: the independent reference the Qwen2 conversion is checked against. Nothing here shares code
with `qwen_chat.engine.model.qwen_v1`.

Per block: x += c_proj(attention(rotary(split3(c_attn(ln_1(x)))))); x += mlp.c_proj(w1(h) * silu(w2(h)))
with h = ln_2(x); RMSNorm everywhere; rotary embeddings rotate the two halves of each head, with base
`rotary_emb_base`; causal softmax attention scaled by 1/sqrt(kv_channels). Valid up to `seq_length`, where
logn attention and dynamic NTK do not act yet.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: torch.Tensor, base: float) -> torch.Tensor:
    """x: (heads, positions, head_dim)."""
    dim = x.shape[-1]
    # In float32, as Qwen v1's RotaryEmbedding computes them.
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.outer(torch.arange(x.shape[1]).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    first, second = x[..., : dim // 2], x[..., dim // 2 :]
    rotated_half = torch.cat([-second, first], dim=-1)
    return x * angles.cos().to(x.dtype) + rotated_half * angles.sin().to(x.dtype)


def qwen_v1_logits(checkpoint: Path, token_ids: list[int]) -> torch.Tensor:
    """Logits (positions x vocab_size) of the original Qwen v1 network for one sequence, in float32."""
    config = json.loads((checkpoint / "config.json").read_text())
    w = load_file(str(checkpoint / "model.safetensors"))
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim, eps, base = config["kv_channels"], config["layer_norm_epsilon"], config["rotary_emb_base"]
    n = len(token_ids)
    x = w["transformer.wte.weight"][torch.tensor(token_ids)]
    causal = torch.full((n, n), float("-inf")).triu(1)
    for layer in range(config["num_hidden_layers"]):
        p = f"transformer.h.{layer}."
        h = _rms_norm(x, w[p + "ln_1.weight"], eps)
        qkv = h @ w[p + "attn.c_attn.weight"].T + w[p + "attn.c_attn.bias"]
        q, k, v = (t.view(n, heads, head_dim).transpose(0, 1) for t in qkv.split(hidden, dim=-1))
        q, k = _rotate(q, base), _rotate(k, base)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal
        attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, hidden)
        x = x + attended @ w[p + "attn.c_proj.weight"].T
        h = _rms_norm(x, w[p + "ln_2.weight"], eps)
        a1, a2 = h @ w[p + "mlp.w1.weight"].T, h @ w[p + "mlp.w2.weight"].T
        x = x + (a1 * torch.nn.functional.silu(a2)) @ w[p + "mlp.c_proj.weight"].T
    x = _rms_norm(x, w["transformer.ln_f.weight"], eps)
    return x @ w["lm_head.weight"].T
