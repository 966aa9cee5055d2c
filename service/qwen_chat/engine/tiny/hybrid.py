"""Tiny random hybrid chat models (Gated DeltaNet linear attention with one full-attention layer in four), in
the layouts Qwen ships them, served by the hybrid core:

- `qwen3_5`: Qwen3.5's released multimodal layout (`Qwen3_5ForConditionalGeneration`, a vision tower beside
  the language model), so a loader proves it takes the language model alone (`AutoModelForCausalLM` gives a
  `Qwen3_5ForCausalLM` of type `qwen3_5_text`);
- `qwen3_5_moe`: Qwen3.5-MoE's, the same image-text layout with routed experts and a shared one;
- `qwen3_next`: Qwen3-Next (`Qwen3NextForCausalLM`), mixture-of-experts with a shared expert.

All carry the tiny Qwen3's tokenizer; qwen3_5 and qwen3_5_moe a chat template in Qwen3.5's format (XML
tool calls, qwen3_5_template.py), qwen3_next Qwen3's thinking template (Qwen3-Next keeps Hermes calls).
The sizes are the smallest that keep each layer kind's shape rules (key and value heads, a 4-wide causal
conv); the real models' numbers are in transformers' configs (Qwen3.5-0.8B/2B and Qwen3-Next-80B-A3B).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3NextConfig,
    Qwen3NextForCausalLM,
)

from qwen_chat.engine.tiny.parts import SPECIAL_TOKENS, build_tokenizer
from qwen_chat.engine.tiny.qwen3 import CHAT_TEMPLATE, THINK_TOKENS
from qwen_chat.engine.tiny.qwen3_5_template import CHAT_TEMPLATE as QWEN3_5_TEMPLATE

LAYER_TYPES = ["linear_attention", "linear_attention", "linear_attention", "full_attention"]
_TEXT: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": len(LAYER_TYPES),
    "layer_types": LAYER_TYPES,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "linear_num_value_heads": 4,
    "linear_num_key_heads": 2,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 32,
    "linear_conv_kernel_dim": 4,
    "max_position_embeddings": 2048,
    "initializer_range": 0.5,  # peaked, context-dependent logits, as the other tiny models
    "tie_word_embeddings": False,
    "bos_token_id": None,
    "eos_token_id": 2,  # <|im_end|>
    "pad_token_id": 0,
}
_EXPERTS: dict[str, Any] = {
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64,
}
_VISION: dict[str, Any] = {
    "depth": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 128,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


def make_tiny_qwen3_5(directory: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer(seed=seed, added=THINK_TOKENS, chat_template=QWEN3_5_TEMPLATE)
    torch.manual_seed(seed)
    config = Qwen3_5Config(
        text_config={**_TEXT, "vocab_size": len(tokenizer)}, vision_config=_VISION, tie_word_embeddings=False
    )
    return _save(Qwen3_5ForConditionalGeneration(config), tokenizer, directory)


def make_tiny_qwen3_5_moe(directory: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer(seed=seed, added=THINK_TOKENS, chat_template=QWEN3_5_TEMPLATE)
    torch.manual_seed(seed)
    text = {**_TEXT, **_EXPERTS, "vocab_size": len(tokenizer)}
    config = Qwen3_5MoeConfig(text_config=text, vision_config=_VISION, tie_word_embeddings=False)
    return _save(Qwen3_5MoeForConditionalGeneration(config), tokenizer, directory)


def make_tiny_qwen3_next(directory: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer(seed=seed, added=THINK_TOKENS, chat_template=CHAT_TEMPLATE)
    torch.manual_seed(seed)
    config = Qwen3NextConfig(**_TEXT, **_EXPERTS, vocab_size=len(tokenizer), dtype="float32")
    return _save(Qwen3NextForCausalLM(config), tokenizer, directory)


def _save(model: Any, tokenizer: Any, directory: Path) -> Path:
    """As the other tiny models: rare special tokens, merged tokens over single bytes, `</think>` likelier."""
    with torch.no_grad():
        head = model.lm_head.weight
        head[: len(SPECIAL_TOKENS)] *= 0.2
        head[len(SPECIAL_TOKENS) : len(SPECIAL_TOKENS) + 256] *= 0.3
        head[tokenizer.convert_tokens_to_ids("</think>")] *= 2.0
    model.generation_config.eos_token_id = [2, 0]
    model.generation_config.pad_token_id = 0
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
