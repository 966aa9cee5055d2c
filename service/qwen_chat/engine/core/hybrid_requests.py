"""What the hybrid core holds of each request, and how many tokens of cache it gives them all."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from qwen_chat.engine.core.grammar import Matcher
from qwen_chat.engine.core.hybrid_cache import HybridLayout, RequestKV
from qwen_chat.engine.core.kv_cache import CPU_CACHE_TOKENS
from qwen_chat.engine.wire import Submit
from qwen_chat.settings import Settings


@dataclass
class Tokens:
    """What `BatchSampler` reads of a request (the shape of transformers' request state)."""

    request_id: str
    initial_tokens: list[int]
    generated_tokens: list[int] = field(default_factory=list)


@dataclass
class SamplerRow:
    state: Tokens


@dataclass
class Request:
    submit: Submit
    tokens: Tokens
    reserved: int  # tokens of cache held for it: its prompt and its longest reply
    kv: RequestKV | None = None  # its full-attention keys and values, from admission on
    prefilled: int = 0  # prompt tokens in the cache
    reused: int = 0  # of those, taken from a kept state
    keep_at: int = 0  # where its state is kept (0: nowhere)
    matcher: Matcher | None = None  # its response_format's grammar, compiled on the submitting thread

    @classmethod
    def of(cls, submit: Submit, context_length: int, matcher: Matcher | None) -> Request:
        prompt = list(submit.prompt_ids)
        reserved = min(len(prompt) + submit.max_new_tokens, context_length)
        return cls(submit, Tokens(submit.request_id, prompt), reserved, matcher=matcher)

    @property
    def request_id(self) -> str:
        return self.submit.request_id


def cache_tokens(
    settings: Settings, device: torch.device, layout: HybridLayout, rows: int, longest: int
) -> int:
    """The tokens of full-attention cache the core gives its requests and kept states: KV_CACHE_TOKENS,
    else on CUDA what KV_CACHE_MEMORY_FRACTION of the free memory holds beside every row's linear state
    (raises when that is less than one request of the longest size, `longest`), else `CPU_CACHE_TOKENS` and
    room for a kept conversation state per row."""
    if settings.kv_cache_tokens:
        return max(settings.kv_cache_tokens, longest)
    if device.type != "cuda":
        # As the batch core's, plus a kept conversation state per row (in tokens of the same memory).
        kept = rows * math.ceil(layout.state_bytes / layout.token_bytes)
        return max(CPU_CACHE_TOKENS, longest) + kept
    free, _ = torch.cuda.mem_get_info(device)
    states = (rows + 1) * layout.state_bytes
    tokens = int((free * settings.kv_cache_memory_fraction - states) // layout.token_bytes)
    if tokens < longest:
        raise RuntimeError(
            f"the KV cache holds {tokens} tokens, less than one request of the longest admitted size "
            f"({longest}: MAX_INPUT_TOKENS plus MAX_NEW_TOKENS); lower those, or raise "
            "KV_CACHE_MEMORY_FRACTION or KV_CACHE_TOKENS"
        )
    return tokens


def cache_usage(layout: HybridLayout, reserved: int, requests: int, tokens: int, rows: int) -> float:
    """The share of the cache's memory that `requests` admitted requests hold: the keys and values reserved
    for their prompts and replies (`reserved` tokens of `tokens`) and their linear states (of `rows`)."""
    held = reserved * layout.token_bytes + requests * layout.state_bytes
    return held / (tokens * layout.token_bytes + rows * layout.state_bytes)
