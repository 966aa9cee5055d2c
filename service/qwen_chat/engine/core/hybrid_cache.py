"""What the hybrid core's forwards read and write: each linear-attention layer's recurrent and conv state per
decoding row, each request's full-attention keys and values, and the attention over them.

A hybrid model (Qwen3.5, Qwen3-Next) runs transformers' own layers; `HybridCache` is the cache object they are
handed, answering the calls they make of transformers' `Cache` (`get_conv_state`, `update_conv_state`,
`get_recurrent_state`, `update_recurrent_state`, `update`, ...; `hf_internals.CACHE_PROTOCOL` lists them and
is checked at start). Its layout:

- The linear layers' states live in one pool per layer, a row per decoding slot plus one staging row where a
  prompt is prefilled. Decoding rows are always the pool's first rows, in batch order, so a decode forward
  reads and updates `pool[:rows]` in place: no gather, no scatter. A request that ends has the last row moved
  into its place (one row's copy); one whose prefill ends is copied from the staging row to the end.
- Each request's full-attention keys and values are tensors of its own (`RequestKV`), sized for its prompt
  and reply when it is admitted, written at its own positions.
- Attention runs per request over its own keys (`rows_attention`, registered as the model's attention), so
  rows of different lengths need no padding and nothing is re-copied as requests come and go. No pad token
  ever passes a linear layer: a prompt is prefilled alone, in chunks, into the staging row.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

from qwen_chat.engine import hf_internals

ATTENTION = "qwen_chat_rows"  # the name the model's attention is registered under
_active = threading.local()  # the cache of the forward running on this thread
_NO_MASK = {"full_attention": None, "linear_attention": None}  # per-request attention needs no mask


@dataclass(frozen=True)
class HybridLayout:
    """A hybrid model's cache shapes, from its text config."""

    linear_layers: tuple[int, ...]
    full_layers: tuple[int, ...]
    conv_dim: int
    conv_kernel: int
    value_heads: int
    key_head_dim: int
    value_head_dim: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def state_bytes(self) -> int:
        """One request's linear-layer state: its conv window (model dtype) and recurrent state (float32)."""
        element = torch.tensor([], dtype=self.dtype).element_size()
        conv = self.conv_dim * self.conv_kernel * element
        recurrent = self.value_heads * self.key_head_dim * self.value_head_dim * 4
        return len(self.linear_layers) * (conv + recurrent)

    @property
    def token_bytes(self) -> int:
        """One token's keys and values over the full-attention layers."""
        element = torch.tensor([], dtype=self.dtype).element_size()
        return len(self.full_layers) * 2 * self.kv_heads * self.head_dim * element


def layout_of(config: Any, dtype: torch.dtype) -> HybridLayout:
    text = config.get_text_config()
    types = list(text.layer_types)
    key_dim = text.linear_key_head_dim * text.linear_num_key_heads
    value_dim = text.linear_value_head_dim * text.linear_num_value_heads
    return HybridLayout(
        linear_layers=tuple(i for i, kind in enumerate(types) if kind == "linear_attention"),
        full_layers=tuple(i for i, kind in enumerate(types) if kind == "full_attention"),
        conv_dim=2 * key_dim + value_dim,
        conv_kernel=text.linear_conv_kernel_dim,
        value_heads=text.linear_num_value_heads,
        key_head_dim=text.linear_key_head_dim,
        value_head_dim=text.linear_value_head_dim,
        kv_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        dtype=dtype,
    )


def is_hybrid(config: Any) -> bool:
    return "linear_attention" in (getattr(config.get_text_config(), "layer_types", None) or [])


class RequestKV:
    """One request's keys and values in every full-attention layer, room for `capacity` tokens."""

    def __init__(self, layout: HybridLayout, capacity: int, device: torch.device) -> None:
        shape = (layout.kv_heads, capacity, layout.head_dim)
        self.keys = {
            layer: torch.empty(shape, dtype=layout.dtype, device=device) for layer in layout.full_layers
        }
        self.values = {layer: torch.empty_like(self.keys[layer]) for layer in layout.full_layers}
        self.capacity = capacity
        self.length = 0  # tokens written in every layer

    def copy_prefix(self, other: RequestKV, length: int) -> None:
        for layer, keys in self.keys.items():
            keys[:, :length].copy_(other.keys[layer][:, :length])
            self.values[layer][:, :length].copy_(other.values[layer][:, :length])
        self.length = length


class HybridCache:
    def __init__(self, layout: HybridLayout, rows: int, device: torch.device) -> None:
        self.layout = layout
        self.staging = rows  # the pool row prompts are prefilled in
        conv = (rows + 1, layout.conv_dim, layout.conv_kernel)
        recurrent = (rows + 1, layout.value_heads, layout.key_head_dim, layout.value_head_dim)
        self.conv = {i: torch.zeros(conv, dtype=layout.dtype, device=device) for i in layout.linear_layers}
        self.recurrent = {
            i: torch.zeros(recurrent, dtype=torch.float32, device=device) for i in layout.linear_layers
        }
        # The forward about to run: the pool rows it reads, the requests' keys and values, each row's start.
        self._rows = slice(0, 0)
        self._fresh = False  # a prompt's first chunk: no state to resume from
        self._kvs: list[RequestKV] = []
        self._written = 0  # tokens this forward wrote to each request's keys and values

    # --- set up by the core before each forward ---

    def decoding(self, kvs: list[RequestKV]) -> None:
        """One token for each of `kvs`, the requests of pool rows 0..len(kvs)-1 in that order."""
        self._rows, self._fresh, self._kvs = slice(0, len(kvs)), False, kvs

    def prefilling(self, kv: RequestKV) -> None:
        """The next chunk of one prompt, in the staging row; a first chunk starts from an empty state."""
        self._rows, self._fresh, self._kvs = slice(self.staging, self.staging + 1), kv.length == 0, [kv]

    def forward(self, model: Any, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`model` on `ids` [rows, tokens] at `positions`, over the rows `decoding` or `prefilling` set up:
        the logits of each row's last token [rows, vocab]. `rows_attention` reads this cache meanwhile."""
        _active.cache = self
        try:
            out = model(
                input_ids=ids,
                position_ids=positions,
                cache=self,
                attention_mask=_NO_MASK,
                use_cache=True,
                logits_to_keep=1,
            )
            logits: torch.Tensor = out.logits[:, -1]
            return logits
        finally:
            _active.cache = None
            for kv in self._kvs:
                kv.length += self._written
            self._written = 0
            self._kvs = []  # a request that ends frees its keys and values at once

    # --- slots ---

    def move(self, source: int, target: int) -> None:
        """Row `target` takes row `source`'s linear states."""
        if source != target:
            for layer in self.layout.linear_layers:
                self.conv[layer][target].copy_(self.conv[layer][source])
                self.recurrent[layer][target].copy_(self.recurrent[layer][source])

    def save(self, row: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """A copy of row `row`'s linear states."""
        return {
            i: (self.conv[i][row].clone(), self.recurrent[i][row].clone()) for i in self.layout.linear_layers
        }

    def restore(self, row: int, states: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for layer, (conv, recurrent) in states.items():
            self.conv[layer][row].copy_(conv)
            self.recurrent[layer][row].copy_(recurrent)

    # --- what transformers' layers call (hf_internals.CACHE_PROTOCOL) ---

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # the core always passes position_ids

    def is_recording_past(self, layer_idx: int) -> bool:
        return False

    def increase_count(self, layer_idx: int, state_idx: int = 0) -> None:
        return None

    def get_recurrent_states_to_keep(self, layer_idx: int | None = None) -> int:
        return 0

    def get_conv_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        return None if self._fresh else self.conv[layer_idx][self._rows]

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        return None if self._fresh else self.recurrent[layer_idx][self._rows]

    def update_conv_state(
        self, conv_states: torch.Tensor, layer_idx: int, state_idx: int = 0, **kwargs: Any
    ) -> torch.Tensor:
        """A chunk's conv inputs [rows, channels, tokens]: keep the last window, return it with the window it
        continues (what the causal conv reads)."""
        pool = self.conv[layer_idx][self._rows]
        full = conv_states if self._fresh else torch.cat([pool, conv_states.to(pool.dtype)], dim=-1)
        window = full[..., -self.layout.conv_kernel :]
        missing = self.layout.conv_kernel - window.shape[-1]
        if missing > 0:
            window = functional.pad(window, (missing, 0))
        pool.copy_(window)
        return full

    def update_recurrent_state(
        self, recurrent_states: Any, layer_idx: int, state_idx: int = 0, **kwargs: Any
    ) -> Any:
        pool = self.recurrent[layer_idx][self._rows]
        pool.copy_(recurrent_states)
        return pool

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's new keys and values [rows, heads, tokens, dim] at its own positions."""
        tokens = key_states.shape[2]
        for row, kv in enumerate(self._kvs):
            kv.keys[layer_idx][:, kv.length : kv.length + tokens] = key_states[row]
            kv.values[layer_idx][:, kv.length : kv.length + tokens] = value_states[row]
        self._written = tokens
        return key_states, value_states

    def attend(self, layer: int, query: torch.Tensor, scaling: float | None, grouped: bool) -> torch.Tensor:
        """Each row's queries [rows, heads, tokens, dim] over its own keys, causally: [rows, tokens, heads,
        dim]."""
        tokens = query.shape[2]
        out = torch.empty_like(query)
        for row, kv in enumerate(self._kvs):
            start, end = kv.length, kv.length + tokens
            mask = None
            causal = False
            if tokens > 1:
                if start == 0:
                    causal = True
                else:
                    positions = torch.arange(end, device=query.device)
                    mask = positions[None, :] <= (positions[start:, None])
            out[row] = functional.scaled_dot_product_attention(
                query[row : row + 1],
                kv.keys[layer][None, :, :end],
                kv.values[layer][None, :, :end],
                attn_mask=mask,
                is_causal=causal,
                scale=scaling,
                enable_gqa=grouped,
            )[0]
        return out.transpose(1, 2).contiguous()


def rows_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The model's attention in the hybrid core's forwards; any other forward gets transformers' SDPA."""
    cache: HybridCache | None = getattr(_active, "cache", None)
    if cache is None:
        forward: tuple[torch.Tensor, None] = hf_internals.sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return forward
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    return cache.attend(module.layer_idx, query, scaling, grouped), None  # type: ignore[arg-type]


def install(model: Any) -> None:
    """Make `rows_attention` the model's attention."""
    hf_internals.register_attention(ATTENTION, rows_attention)
    model.set_attn_implementation(ATTENTION)
