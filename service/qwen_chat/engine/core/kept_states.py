"""Conversation states the hybrid core keeps between turns, so that a conversation's next prompt is not
prefilled from its first token again.

A hybrid model's state after a prompt is its linear layers' recurrent and conv state (fixed size) plus the
full-attention layers' keys and values; it cannot be cut back to an earlier token, so it is kept where a
later prompt will extend it. That is where a chat prompt's generation prompt starts (its last
`<|im_start|>`): the next turn's prompt repeats the history up to there token for token, then differs (the
template drops the reply's thinking, closes it with `<|im_end|>`, and the reply's text is tokenized afresh),
so the next turn prefills only the last reply and the new message. An OpenAI client resending the history
resumes the same way.

Memory: each kept state counts as its tokens plus its linear state in token-sized units, against the same
budget as running requests. The least recently used is dropped first, at once when an admitted request
needs the room; a state is dropped when a longer one of the same conversation replaces it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from qwen_chat.engine.core.hybrid_cache import HybridLayout, RequestKV

# Shorter prompts are cheaper to prefill again than to keep.
MIN_KEPT_TOKENS = 16
LinearStates = dict[int, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Kept:
    tokens: tuple[int, ...]
    states: LinearStates
    kv: RequestKV

    @property
    def length(self) -> int:
        return len(self.tokens)


def generation_marker(tokenizer: Any) -> int | None:
    """The token a chat prompt's generation prompt starts with (ChatML's `<|im_start|>`), if there is one."""
    token = tokenizer.convert_tokens_to_ids("<|im_start|>")
    return token if isinstance(token, int) and token != tokenizer.unk_token_id else None


class KeptStates:
    def __init__(self, layout: HybridLayout, marker: int | None) -> None:
        self._layout = layout
        self._marker = marker  # the token a generation prompt starts with; None: nothing is kept
        self._state_tokens = math.ceil(layout.state_bytes / max(layout.token_bytes, 1))
        self._kept: OrderedDict[tuple[int, ...], Kept] = OrderedDict()  # least recently used first
        self.tokens = 0  # what they hold, in tokens of the cache budget
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._kept)

    def keep_point(self, prompt: list[int], prefilled: int) -> int:
        """Where to keep this prompt's state: before its last generation-prompt marker, if that lies past what
        is already in the cache and far enough in to be worth it; 0 for nowhere."""
        if self._marker is None:
            return 0
        for position in range(len(prompt) - 1, prefilled, -1):
            if prompt[position] == self._marker:
                return position if position >= MIN_KEPT_TOKENS else 0
        return 0

    def cost(self, length: int) -> int:
        return length + self._state_tokens

    def keep(self, tokens: list[int], states: LinearStates, kv: RequestKV, room: int) -> None:
        """Keep a copy of the state after `tokens` (the first len(tokens) of `kv`), within `room` tokens of
        budget beside the states kept already; older states of the same conversation are dropped."""
        key = tuple(tokens)
        if key in self._kept:
            self._kept.move_to_end(key)
            return
        cost = self.cost(len(key))
        if cost > room:
            return  # it would not fit even alone: the states kept stay
        for older in [k for k in self._kept if len(k) < len(key) and key[: len(k)] == k]:
            self._drop(older)
        while self._kept and cost > room - self.tokens:
            self._drop(next(iter(self._kept)))
        if cost > room - self.tokens:
            return
        copy = RequestKV(self._layout, len(key), next(iter(kv.keys.values())).device)
        copy.copy_prefix(kv, len(key))
        self._kept[key] = Kept(key, states, copy)
        self.tokens += cost

    def find(self, prompt: list[int]) -> Kept | None:
        """The longest kept prefix of `prompt` (shorter than it), now the most recently used; None if none."""
        best: Kept | None = None
        for kept in self._kept.values():
            longer = best is None or kept.length > best.length
            if longer and kept.length < len(prompt) and tuple(prompt[: kept.length]) == kept.tokens:
                best = kept
        if best is not None:
            self._kept.move_to_end(best.tokens)
        return best

    def resume(self, kept: Kept, kv: RequestKV) -> bool:
        """Copy `kept`'s keys and values into `kv`, if it is still kept (its linear states: `kept.states`)."""
        if self._kept.get(kept.tokens) is not kept:
            return False
        kv.copy_prefix(kept.kv, kept.length)
        self.hits += 1
        self.reused_tokens += kept.length
        return True

    def free(self, tokens: int) -> bool:
        """Drop the least recently used states until `tokens` of budget are free of them; False if they
        do not hold that many."""
        while self._kept and tokens > 0:
            before = self.tokens
            self._drop(next(iter(self._kept)))
            tokens -= before - self.tokens
        return tokens <= 0

    def _drop(self, key: tuple[int, ...]) -> None:
        kept = self._kept.pop(key)
        self.tokens -= self.cost(kept.length)
