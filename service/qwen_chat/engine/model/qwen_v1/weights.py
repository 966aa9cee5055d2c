"""Qwen v1 (`QWenLMHeadModel`) weights and config, mapped onto `Qwen2ForCausalLM`.

The two architectures are the same network under other names: Qwen v1's fused `c_attn` (with bias) is
Qwen2's q, k and v projections (with bias) stacked; its `c_proj` is `o_proj` (neither has a bias); its MLP
is `c_proj(w1(x) * silu(w2(x)))`, so **w2 is the gate and w1 the up projection**; rotary embeddings rotate
half of each head in both. Qwen v1 stores twice the MLP width as `intermediate_size`. What Qwen2 lacks is logn
attention and dynamic NTK, which Qwen v1 applies only past `seq_length`: the context is capped there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch

_LAYER = re.compile(r"transformer\.h\.(\d+)\.(.+)")
_LAYER_NAMES = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.w2.weight": "mlp.gate_proj.weight",
    "mlp.w1.weight": "mlp.up_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# Buffers some revisions saved; Qwen2 computes them.
_SKIPPED = re.compile(r".*(rotary_emb\.inv_freq|\.bias_k|masked_bias|logn_tensor)$")


def _first(config: dict[str, Any], *names: str) -> Any:
    """A config value under its name or the name early Qwen-7B revisions used."""
    for name in names:
        if config.get(name) is not None:
            return config[name]
    raise ValueError(f"config.json has no {' or '.join(names)}")


def qwen2_config(config: dict[str, Any], vocab_size: int, stop_ids: list[int], pad_id: int) -> dict[str, Any]:
    """Qwen2 config values for a Qwen v1 `config.json`; raises where Qwen2 cannot compute the same thing."""
    if float(config.get("rotary_pct", 1.0)) != 1.0:
        raise ValueError(f"rotary_pct={config['rotary_pct']}: only full rotary embeddings convert to Qwen2")
    if config.get("no_bias", True) is not True:
        raise ValueError("no_bias=false: Qwen2 has no bias on o_proj or the MLP")
    hidden = int(_first(config, "hidden_size", "n_embd"))
    heads = int(_first(config, "num_attention_heads", "n_head"))
    head_dim = int(config.get("kv_channels") or hidden // heads)
    if heads * head_dim != hidden:
        raise ValueError(f"kv_channels={head_dim} x {heads} heads is not hidden_size={hidden}")
    dtype = next((name for name in ("bf16", "fp16", "fp32") if config.get(name)), None)
    torch_dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(
        dtype or "", config.get("torch_dtype") or "bfloat16"
    )
    context = int(_first(config, "seq_length", "max_position_embeddings"))
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": int(_first(config, "intermediate_size", "ffn_hidden_size")) // 2,
        "num_hidden_layers": int(_first(config, "num_hidden_layers", "n_layer")),
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": context,
        "rms_norm_eps": float(config.get("layer_norm_epsilon", 1e-6)),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(config.get("rotary_emb_base", 10000)),
        },
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "initializer_range": float(config.get("initializer_range", 0.02)),
        "bos_token_id": None,
        "eos_token_id": stop_ids,
        "pad_token_id": pad_id,
        "dtype": torch_dtype,
    }


def convert_tensors(
    tensors: Iterator[tuple[str, torch.Tensor]], hidden: int, vocab_size: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """Qwen2 names and tensors for Qwen v1 ones. The embedding and output rows past the tokenizer's last
    token (padding up to a round `vocab_size`) are dropped, so no padding token can ever be sampled."""
    for name, tensor in tensors:
        if _SKIPPED.match(name):
            continue
        if name in _TOP_NAMES:
            if name != "transformer.ln_f.weight":
                tensor = tensor[:vocab_size]
            yield _TOP_NAMES[name], tensor.contiguous()
            continue
        match = _LAYER.fullmatch(name)
        if match is None:
            raise ValueError(f"unexpected tensor {name!r} in a Qwen v1 checkpoint")
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
            kind = rest.rsplit(".", 1)[1]
            if tensor.shape[0] != 3 * hidden:
                raise ValueError(f"{name} has {tensor.shape[0]} rows, not 3 x hidden_size = {3 * hidden}")
            for projection, part in zip(("q_proj", "k_proj", "v_proj"), tensor.split(hidden), strict=True):
                yield f"{prefix}self_attn.{projection}.{kind}", part.contiguous()
        elif rest in _LAYER_NAMES:
            yield prefix + _LAYER_NAMES[rest], tensor.contiguous()
        else:
            raise ValueError(f"unexpected tensor {name!r} in a Qwen v1 checkpoint")
