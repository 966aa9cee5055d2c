"""What the batch sampler (batch_sampler.py) keeps of each request it samples for, and of each step: the
plan `prepare_tensor_args` builds and `__call__` carries out."""

from __future__ import annotations

import random
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from qwen_chat.engine.core.grammar import Matcher
from qwen_chat.engine.wire import TokenLogprob
from qwen_chat.sampling_params import SamplingParams


@dataclass
class RowRequest:
    slot: int
    params: SamplingParams
    uniforms: random.Random | None  # None: greedy
    matcher: Matcher | None = None
    prompt_length: int = -1  # the prompt as first seen; -1: row not started
    initial_length: int = -1  # its initial tokens when last started (a paused request comes back with more)
    added: int = 0  # reply tokens its tables hold: those of its state when started, then one per step
    last_prepare: int = -1  # the sampler's step count when it last had a row
    drawn: list[float] = field(default_factory=list)  # the uniforms of its last two steps
    replay: list[float] = field(default_factory=list)  # uniforms to draw again (their steps were discarded)
    accepted: int = 0  # generated tokens the matcher has taken
    top_logprobs: int = -1  # -1: none wanted
    logprobs: list[TokenLogprob] | None = None  # computed, not yet taken by the router
    stop_ids: tuple[int, ...] = ()  # masked until `params.min_tokens` tokens are generated

    @property
    def needs_sync(self) -> bool:
        """Its steps need the previous step's tokens on the host first (a grammar, min_tokens, logprobs)."""
        return self.matcher is not None or self.top_logprobs >= 0 or self.bans_stops

    @property
    def bans_stops(self) -> bool:
        return self.params.min_tokens > 0 and bool(self.stop_ids) and self.matcher is None


@dataclass(frozen=True)
class Plan:
    """One step, as the host knows it: which kinds of work its rows need (an eager step skips the rest; a
    static one does all of it) and the work only the host can do, which runs in synchronous steps only."""

    rows: int
    penalised: bool  # some row has a repetition penalty
    occurring: bool  # some row has a presence or frequency penalty
    sampled: int  # rows that sample (temperature > 0)
    constrained: torch.Tensor | None = None  # row indices with a grammar, None when none
    bitmask: Future[torch.Tensor] | None = None  # their allowed tokens, one row each, being computed
    banned: torch.Tensor | None = None  # [2, n]: (row, stop token) pairs of rows short of their min_tokens
    logprob_rows: tuple[int, ...] = ()  # row indices that want log-probabilities
    logprob_requests: tuple[RowRequest, ...] = ()

    @property
    def host_work(self) -> bool:
        return self.constrained is not None or self.banned is not None or bool(self.logprob_rows)


def banned_stops(row: RowRequest | None, state: Any) -> tuple[int, ...]:
    """The stop tokens a free row short of its min_tokens may not take yet (a grammar decides where its own
    rows end)."""
    if row is None or not row.bans_stops:
        return ()
    produced = len(state.initial_tokens) + len(state.generated_tokens) - row.prompt_length
    return row.stop_ids if produced < row.params.min_tokens else ()
