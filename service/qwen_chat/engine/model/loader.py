"""Load a tokenizer and causal LM onto the configured device, in the configured dtype."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.utils import logging as transformers_logging

from qwen_chat.engine.model.attention import set_attention
from qwen_chat.engine.model.tokenizer import checkpoint
from qwen_chat.settings import Settings

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("QWEN_CHAT_DEVICE=cuda but torch sees no CUDA device")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return _DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    context_length: int
    stop_token_ids: frozenset[int]
    family: str


def load_model(settings: Settings) -> LoadedModel:
    # Progress bars are for terminals; in a log stream they are noise.
    transformers_logging.disable_progress_bar()
    torch.set_num_threads(settings.torch_threads_per_worker)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    source = checkpoint(settings)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    model: Any = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype)
    model = model.to(device).eval()
    set_attention(model, settings.attention, device, source.family)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        context_length=_context_length(model, tokenizer),
        stop_token_ids=_stop_token_ids(model, tokenizer),
        family=source.family,
    )


def input_budget(settings: Settings, context_length: int) -> int:
    """MAX_INPUT_TOKENS, else room for a full reply; a tiny context still gets half of it for the prompt."""
    if settings.max_input_tokens:
        return settings.max_input_tokens
    budget = context_length - settings.max_new_tokens
    return budget if budget >= context_length // 2 else context_length // 2


def pad_token_id(tokenizer: Any, stop_ids: frozenset[int]) -> int:
    """What `generate` and the batching manager pad with: the tokenizer's pad token, else a stop token."""
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else min(stop_ids)


def decoding_config(
    loaded: LoadedModel, max_new_tokens: int, stop_ids: frozenset[int] | None = None
) -> GenerationConfig:
    """What `generate` and the batching manager decode with: the argmax of what our samplers return. The
    sampling values are set (to transformers' own defaults, which its greedy check does not warn about), so
    none of the checkpoint's generation_config.json fills them in (transformers would apply its repetition
    penalty on top of ours): those are the server's defaults (`generation_config.py`); min_p, a warper, is
    never used without `do_sample`."""
    stop_ids = loaded.stop_token_ids if stop_ids is None else stop_ids  # empty: nothing stops the reply
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=sorted(stop_ids),
        pad_token_id=pad_token_id(loaded.tokenizer, loaded.stop_token_ids),
        repetition_penalty=1.0,
        temperature=1.0,
        top_p=1.0,
        top_k=50,
    )


def unload(loaded: LoadedModel | None) -> None:
    """Drop the model and give accelerator memory back to the device."""
    if loaded is not None:
        loaded.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _context_length(model: Any, tokenizer: Any) -> int:
    lengths = [
        getattr(model.config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    # Tokenizers without a limit report a huge sentinel (1e30); ignore it.
    valid = [n for n in lengths if isinstance(n, int) and 0 < n < 10_000_000]
    return min(valid) if valid else 2048


def _stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    # ChatML models end a turn with <|im_end|> even when their config names only <|endoftext|>.
    for token in ("<|im_end|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return frozenset(ids)
