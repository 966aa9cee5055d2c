"""A tiny random Qwen3 chat model (`Qwen3ForCausalLM`, q/k norms, explicit head_dim) for tests and demos.

Its tokenizer has Qwen3's `<think>` and `</think>` as ordinary added tokens, and its chat template follows
Qwen3's thinking switch: with `enable_thinking` (the default) the prompt opens the `<think>` block for the
model, as Qwen3-2507's thinking template does, so a reply is reasoning until the model closes it; with
`enable_thinking=false` the prompt holds an empty, closed block and the reply is all answer. Earlier turns
keep only their answer, as in Qwen3's own template. Random weights never learned to think, so `</think>` is
made likelier than other tokens: some replies close their block after a few tokens and answer after it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from qwen_chat.engine.tiny.parts import build_model, build_tokenizer

THINK_TOKENS = ("<think>", "</think>")
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}"
    "{{- '<think>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def make_tiny_qwen3(directory: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer(seed=seed, added=THINK_TOKENS, chat_template=CHAT_TEMPLATE)
    model = build_model(len(tokenizer), seed, classes=(Qwen3Config, Qwen3ForCausalLM), head_dim=32)
    with torch.no_grad():
        # `</think>` likelier than a random token: some greedy replies close their thinking, then answer.
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("</think>")] *= 2.0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
