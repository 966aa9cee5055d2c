"""What the batch sampler (batch_sampler.py) keeps of each request it samples for, and of each step: the
plan `prepare_tensor_args` builds and `__call__` carries out."""

from __future__ import annotations

import random
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from qwen_chat.engine.core.grammar import Matcher
from qwen_chat.engine.wire import TokenLogprob
from qwen_chat.sampling_params import SamplingParams

# A row the sampler has no request for (one cancelled while the step was in flight): left to the argmax.
GREEDY = SamplingParams(1, 0.0, 1.0, 1.0)


@dataclass
class RowRequest:
    slot: int
    params: SamplingParams
    uniforms: random.Random | None  # None: greedy
    matcher: Matcher | None = None
    prompt_length: int = -1  # the prompt as first seen; -1: row not started
    accepted: int = 0  # generated tokens the matcher has taken
    top_logprobs: int = -1  # -1: none wanted
    logprobs: list[TokenLogprob] | None = None  # computed, not yet taken by the router
    stop_ids: tuple[int, ...] = ()  # masked until `params.min_tokens` tokens are generated


@dataclass(frozen=True)
class Plan:
    slots: torch.Tensor
    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    min_p: torch.Tensor
    penalty: torch.Tensor
    uniform: torch.Tensor
    penalised: torch.Tensor | None  # row indices with a penalty != 1, None when no row has one
    penalised_slots: list[int]
    occurring: torch.Tensor | None  # row indices with a presence or frequency penalty, None when none
    occurring_slots: list[int]
    presence: torch.Tensor  # per row of `occurring`
    frequency: torch.Tensor
    sampled: torch.Tensor | None  # row indices with temperature > 0, None when none
    constrained: torch.Tensor | None  # row indices with a grammar, None when none
    bitmask: Future[torch.Tensor] | None  # their allowed tokens, one row each, being computed
    banned: torch.Tensor | None  # [2, n]: (row, stop token) pairs of rows short of their min_tokens
    logprob_rows: list[int]  # row indices that want log-probabilities
    logprob_requests: list[RowRequest]


def banned_stops(row: RowRequest | None, state: Any) -> tuple[int, ...]:
    """The stop tokens a free row short of its min_tokens may not take yet (a grammar decides where its own
    rows end)."""
    if row is None or row.params.min_tokens == 0 or row.matcher is not None:
        return ()
    produced = len(state.initial_tokens) + len(state.generated_tokens) - row.prompt_length
    return row.stop_ids if produced < row.params.min_tokens else ()
