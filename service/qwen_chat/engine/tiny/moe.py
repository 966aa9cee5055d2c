"""Tiny random mixture-of-experts chat models in Qwen's real MoE layouts, for tests and demos.

- `qwen3_moe` (`Qwen3MoeForCausalLM`: Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder): Qwen3's attention (q/k
  norms, explicit head_dim), every layer a sparse block of routed experts, Qwen3's thinking template;
- `qwen2_moe` (`Qwen2MoeForCausalLM`: Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): routed experts beside a gated shared
  expert, Qwen2.5's tokenizer and template.

Few experts, two routed per token, so every expert is exercised by a short reply. Attention is the same as in
the dense families, so the batch core serves them as they are.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

from qwen_chat.engine.tiny.parts import TOOL_TOKENS, build_model, build_tokenizer
from qwen_chat.engine.tiny.qwen3 import CHAT_TEMPLATE as QWEN3_TEMPLATE
from qwen_chat.engine.tiny.qwen3 import THINK_TOKENS

EXPERTS = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64, "decoder_sparse_step": 1}


def make_tiny_qwen3_moe(directory: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer(seed=seed, added=THINK_TOKENS, chat_template=QWEN3_TEMPLATE)
    classes = (Qwen3MoeConfig, Qwen3MoeForCausalLM)
    model = build_model(len(tokenizer), seed, classes=classes, head_dim=32, norm_topk_prob=True, **EXPERTS)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("</think>")] *= 2.0  # as the dense tiny Qwen3
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_tiny_qwen2_moe(directory: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer(seed=seed, added=TOOL_TOKENS)
    classes = (Qwen2MoeConfig, Qwen2MoeForCausalLM)
    model = build_model(len(tokenizer), seed, classes=classes, shared_expert_intermediate_size=128, **EXPERTS)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
