"""The batch engine's sampler: each request's own repetition penalty, temperature, top-p and seed, applied to
every row of a step with one set of tensor operations inside transformers' batching manager.

It is a `ContinuousBatchingLogitsProcessor` appended to the manager's processor list; the manager itself runs
greedy (`do_sample=False`) and takes the argmax of what it returns:
- `prepare_tensor_args` receives the requests whose logits rows the following `__call__` gets, in row order.
  It turns them into a small plan: per-row slot, temperature, top-p, penalty and the next uniform from each
  request's own stream (a few numbers per row; nothing vocabulary-sized), and adds the tokens each request
  generated since the last step to its row of the seen-token table.
- The seen-token table holds, per slot (MAX_RUNNING slots), the ids of the request's prompt and generated
  tokens, kept on the device and appended to in place: the prompt once when it first reaches the sampler,
  then one token per step. Unused entries repeat the row's first id, so the repetition penalty is one
  gather and one scatter over all penalised rows at once, its cost the tokens seen, not the vocabulary.
- Greedy rows are left to the manager's argmax; sampled rows get `sampling.draw`'s token set to +inf.
- A request with a `response_format` has a grammar matcher (engine/core/grammar.py): the plan feeds it the
  tokens generated since the last step and starts filling the rows' allowed-token bitmasks on a thread of
  its own (llguidance computes them outside the GIL), so they are computed while the forward pass runs;
  `__call__` waits for them and masks those
  rows first, so penalties, sampling and the argmax only ever see allowed tokens, and constrained and free
  requests share one batch.
- A request that asked for log-probabilities gets them from its row after the penalty and the mask
  (engine/core/logprobs.py), kept until the step's outputs reach the router (`take_logprobs`).

`prepare_tensor_args` and `__call__` must alternate step by step, which holds in the manager's synchronous,
eager mode only: with double buffering (`use_async_batching`) the plan for step n+1 is built while step n
runs, and a CUDA graph would replay the first plan forever. The engine forces that mode (`batch.py`).
"""

from __future__ import annotations

import random
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from qwen_chat.engine.core.grammar import Matcher, allocate_bitmask, apply_bitmask, fill_masks
from qwen_chat.engine.core.logprobs import log_softmax_rows, token_logprobs
from qwen_chat.engine.core.sampling import draw, uniform_stream
from qwen_chat.engine.hf_internals import ContinuousBatchingLogitsProcessor
from qwen_chat.engine.wire import TokenLogprob
from qwen_chat.sampling_params import SamplingParams

# A row the sampler has no request for (one cancelled while the step was in flight): left to the argmax.
_GREEDY = SamplingParams(1, 0.0, 1.0, 1.0)


@dataclass
class _Request:
    slot: int
    params: SamplingParams
    uniforms: random.Random | None  # None: greedy
    synced: int = -1  # prompt and generated tokens already in the seen table; -1: row not started
    matcher: Matcher | None = None
    prompt_length: int = -1  # the prompt as first seen; -1: row not started
    accepted: int = 0  # generated tokens the matcher has taken
    top_logprobs: int = -1  # -1: none wanted
    logprobs: list[TokenLogprob] | None = None  # computed, not yet taken by the router


@dataclass(frozen=True)
class _Plan:
    slots: torch.Tensor
    temperature: torch.Tensor
    top_p: torch.Tensor
    penalty: torch.Tensor
    uniform: torch.Tensor
    penalised: torch.Tensor | None  # row indices with a penalty != 1, None when no row has one
    penalised_slots: list[int]
    sampled: torch.Tensor | None  # row indices with temperature > 0, None when none
    constrained: torch.Tensor | None  # row indices with a grammar, None when none
    bitmask: Future[torch.Tensor] | None  # their allowed tokens, one row each, being computed
    logprob_rows: list[int]  # row indices that want log-probabilities
    logprob_requests: list[_Request]


class BatchSampler(ContinuousBatchingLogitsProcessor):
    def __init__(self, slots: int, vocab_size: int, device: torch.device) -> None:
        # Parameters are looked up by request id, not passed to add_request.
        self.supported_kwargs: dict[str, type] = {}
        self.ignored_kwargs: tuple[str, ...] = ()
        self._device = device
        self._vocab_size = vocab_size
        self._masks = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        self._seen = torch.zeros(slots, 1024, dtype=torch.long, device=device)
        self._seen_length = [0] * slots
        self._free = list(range(slots - 1, -1, -1))
        self._requests: dict[str, _Request] = {}
        self._plan: _Plan | None = None

    @property
    def active(self) -> int:
        return len(self._requests)

    def register(
        self, request_id: str, params: SamplingParams, matcher: Matcher | None = None, top_logprobs: int = -1
    ) -> None:
        """Before the request reaches the manager; raises IndexError when every slot is taken."""
        uniforms = uniform_stream(params.seed) if params.temperature > 0 else None
        request = _Request(self._free.pop(), params, uniforms, matcher=matcher, top_logprobs=top_logprobs)
        if top_logprobs >= 0:
            request.logprobs = []
        self._requests[request_id] = request

    def take_logprobs(self, request_id: str, count: int) -> list[TokenLogprob]:
        """The router's: the log-probabilities of the request's next `count` tokens ([] if not wanted)."""
        request = self._requests.get(request_id)
        if request is None or request.logprobs is None:
            return []
        taken, request.logprobs[:count] = request.logprobs[:count], []
        return taken

    def forget(self, request_id: str) -> None:
        request = self._requests.pop(request_id, None)
        if request is not None:
            self._free.append(request.slot)

    # --- the manager's side, on its thread ---

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        states = [future.state for future in requests_with_new_token]
        rows: list[_Request | None] = [self._requests.get(state.request_id) for state in states]
        self._sync_seen(rows, states)
        params = [row.params if row is not None else _GREEDY for row in rows]
        slots = [row.slot if row is not None else 0 for row in rows]
        penalised = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
        sampled = [i for i, p in enumerate(params) if p.temperature > 0]
        constrained = [i for i, row in enumerate(rows) if row is not None and row.matcher is not None]
        bitmask = self._fill_masks(rows, states, constrained) if constrained else None
        wanting = [i for i, row in enumerate(rows) if row is not None and row.top_logprobs >= 0]
        as_tensor = lambda values, dtype: torch.tensor(values, dtype=dtype, device=self._device)  # noqa: E731
        self._plan = _Plan(
            slots=as_tensor(slots, torch.long),
            temperature=as_tensor([p.temperature for p in params], torch.float32),
            top_p=as_tensor([p.top_p for p in params], torch.float32),
            penalty=as_tensor([p.repetition_penalty for p in params], torch.float32),
            uniform=as_tensor(
                [row.uniforms.random() if row is not None and row.uniforms else 0.0 for row in rows],
                torch.float64,
            ),
            penalised=as_tensor(penalised, torch.long) if penalised else None,
            penalised_slots=[slots[i] for i in penalised],
            sampled=as_tensor(sampled, torch.long) if sampled else None,
            constrained=as_tensor(constrained, torch.long) if constrained else None,
            bitmask=bitmask,
            logprob_rows=wanting,
            logprob_requests=[row for i in wanting if (row := rows[i]) is not None],
        )
        return torch.zeros(len(rows), dtype=torch.int32)

    def _fill_masks(
        self, rows: list[_Request | None], states: list[Any], constrained: list[int]
    ) -> Future[torch.Tensor]:
        """Feed each constrained row's matcher the tokens generated since the last step, then start its
        mask."""
        bitmask = allocate_bitmask(len(constrained), self._vocab_size)
        matchers: list[Matcher] = []
        for i in constrained:
            row, state = rows[i], states[i]
            assert row is not None and row.matcher is not None
            initial, generated = state.initial_tokens, state.generated_tokens
            if row.prompt_length < 0:
                row.prompt_length = len(initial) + len(generated)
            # A paused and re-queued request has its generated tokens moved into `initial_tokens`.
            produced = len(initial) + len(generated) - row.prompt_length
            if produced > row.accepted:
                new = (list(initial) + list(generated))[row.prompt_length + row.accepted :]
                for token in new:
                    row.matcher.accept(token)
                row.accepted = produced
            matchers.append(row.matcher)
        device = self._device

        def fill() -> torch.Tensor:
            fill_masks(matchers, bitmask)
            return bitmask.to(device)

        return self._masks.submit(fill)

    def _sync_seen(self, rows: list[_Request | None], states: list[Any]) -> None:
        """Append new prompts and the tokens generated since the last step to the seen table, in place."""
        slots: list[int] = []
        columns: list[int] = []
        tokens: list[int] = []
        for row, state in zip(rows, states, strict=True):
            if row is None or row.params.repetition_penalty == 1.0:
                continue
            initial, generated = state.initial_tokens, state.generated_tokens
            if row.synced < 0:
                self._seen_length[row.slot] = 0
                self._grow(len(initial) + len(generated))
                self._seen[row.slot].fill_(initial[0])
                row.synced = 0
            # Prompt and generated tokens in one sequence: a request the manager paused and re-queued comes
            # back with its generated tokens moved into `initial_tokens`, the same sequence.
            if row.synced >= len(initial):
                new = list(generated[row.synced - len(initial) :])
            else:
                new = list(initial[row.synced :]) + list(generated)
            row.synced += len(new)
            start = self._seen_length[row.slot]
            self._grow(start + len(new))
            slots.extend([row.slot] * len(new))
            columns.extend(range(start, start + len(new)))
            tokens.extend(new)
            self._seen_length[row.slot] = start + len(new)
        if tokens:
            index = torch.tensor([slots, columns, tokens], dtype=torch.long, device=self._device)
            self._seen[index[0], index[1]] = index[2]

    def _grow(self, length: int) -> None:
        """Room for `length` seen ids per slot; new columns repeat each row's first id."""
        capacity = self._seen.shape[1]
        if length <= capacity:
            return
        while capacity < length:
            capacity *= 2
        grown = self._seen[:, :1].expand(-1, capacity).clone()
        grown[:, : self._seen.shape[1]] = self._seen
        self._seen = grown

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        plan = self._plan
        if plan is None or (
            plan.penalised is None
            and plan.sampled is None
            and plan.constrained is None
            and not plan.logprob_rows
        ):
            return scores
        # In place: `scores` holds this step's logits, which the manager uses for nothing but its argmax.
        if plan.constrained is not None and plan.bitmask is not None:
            masked = scores.index_select(0, plan.constrained)
            apply_bitmask(masked, plan.bitmask.result())
            scores.index_copy_(0, plan.constrained, masked)
        if plan.penalised is not None:
            penalised = plan.penalised
            width = max(self._seen_length[slot] for slot in plan.penalised_slots)
            seen = self._seen[plan.slots[penalised], :width]
            rows = penalised.unsqueeze(-1)
            logits = scores[rows, seen]
            penalty = plan.penalty[penalised].unsqueeze(-1)
            scores[rows, seen] = torch.where(logits < 0, logits * penalty, logits / penalty)
        logp = None
        if plan.logprob_rows:
            logp = log_softmax_rows(scores, torch.tensor(plan.logprob_rows, device=scores.device))
            # Greedy rows take the argmax; a sampled row's pick replaces it below.
            picked = logp.argmax(-1)
        chosen = None
        if plan.sampled is not None:
            sampled = plan.sampled
            if len(sampled) == scores.shape[0]:
                # Every row is sampled: the sampler may use `scores` as its scratch space (the manager needs
                # nothing of it but the argmax, which the +inf below decides).
                chosen = draw(scores, plan.temperature, plan.top_p, plan.uniform, in_place=True)
            else:
                chosen = draw(
                    scores.index_select(0, sampled),
                    plan.temperature[sampled],
                    plan.top_p[sampled],
                    plan.uniform[sampled],
                    in_place=True,
                )
            scores.index_put_((sampled, chosen), torch.tensor(float("inf"), device=scores.device))
        if logp is not None:
            if chosen is not None:
                where = {row: n for n, row in enumerate(plan.sampled.tolist())}  # type: ignore[union-attr]
                for n, row in enumerate(plan.logprob_rows):
                    if row in where:
                        picked[n] = chosen[where[row]]
            top = [request.top_logprobs for request in plan.logprob_requests]
            for request, entry in zip(plan.logprob_requests, token_logprobs(logp, picked, top), strict=True):
                if request.logprobs is not None:
                    request.logprobs.append(entry)
        return scores
