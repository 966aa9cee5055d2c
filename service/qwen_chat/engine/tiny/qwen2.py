"""The tiny Qwen2 (Qwen2.5's layout) chat model: the tokenizer with Qwen2.5's tool tokens, random weights."""

from __future__ import annotations

from pathlib import Path

from qwen_chat.engine.tiny.parts import TOOL_TOKENS, build_model, build_tokenizer


def make_tiny_qwen2(directory: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer(seed=seed, added=TOOL_TOKENS)
    model = build_model(vocab_size=len(tokenizer), seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
