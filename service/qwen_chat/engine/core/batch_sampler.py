"""The batch engine's sampler: each request's own penalties, temperature, top_k, top_p, min_p and seed,
applied to every row of a step with one set of tensor operations inside transformers' batching manager.

It is a `ContinuousBatchingLogitsProcessor` appended to the manager's processor list; the manager itself runs
greedy (`do_sample=False`) and takes the argmax of what it returns:
- `prepare_tensor_args` receives the requests whose logits rows the following `__call__` gets, in row order.
  It turns them into a small plan: per-row slot, sampling parameters and the next uniform from each
  request's own stream (a few numbers per row; nothing vocabulary-sized), and adds the tokens each request
  generated since the last step to its rows of the token tables (`token_table.py`).
- The seen table holds, per slot (MAX_RUNNING slots), the ids of the request's prompt and generated tokens
  (the repetition penalty's), the generated table its generated tokens only (the presence and frequency
  penalties', OpenAI's definition); both on the device, appended to in place: the prompt once when it first
  reaches the sampler, then one token per step. Each penalty is one gather and one scatter over all its rows
  at once, its cost the tokens seen, not the vocabulary.
- Greedy rows are left to the manager's argmax; sampled rows get `sampling.draw`'s token set to +inf. The
  order is fixed: grammar mask, the stop tokens of rows short of their `min_tokens`, repetition penalty,
  presence and frequency penalties, then `draw`.
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

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from qwen_chat.engine.core.grammar import Matcher, allocate_bitmask, apply_bitmask, fill_masks
from qwen_chat.engine.core.logprobs import log_softmax_rows, token_logprobs
from qwen_chat.engine.core.sampler_rows import GREEDY, Plan, RowRequest, banned_stops
from qwen_chat.engine.core.sampling import draw, penalise_occurrences, uniform_stream
from qwen_chat.engine.core.token_table import TokenTable, since
from qwen_chat.engine.hf_internals import ContinuousBatchingLogitsProcessor
from qwen_chat.engine.wire import Submit, TokenLogprob
from qwen_chat.sampling_params import SamplingParams


class BatchSampler(ContinuousBatchingLogitsProcessor):
    def __init__(self, slots: int, vocab_size: int, device: torch.device) -> None:
        # Parameters are looked up by request id, not passed to add_request.
        self.supported_kwargs: dict[str, type] = {}
        self.ignored_kwargs: tuple[str, ...] = ()
        self._device = device
        self._vocab_size = vocab_size
        self._masks = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        self._seen = TokenTable(slots, device)
        self._generated = TokenTable(slots, device)
        self._free = list(range(slots - 1, -1, -1))
        self._requests: dict[str, RowRequest] = {}
        self._plan: Plan | None = None

    @property
    def active(self) -> int:
        return len(self._requests)

    def register(
        self,
        request_id: str,
        params: SamplingParams,
        matcher: Matcher | None = None,
        top_logprobs: int = -1,
        stop_ids: tuple[int, ...] = (),
    ) -> None:
        """Before the request reaches the manager; raises IndexError when every slot is taken."""
        uniforms = uniform_stream(params.seed) if params.temperature > 0 else None
        request = RowRequest(
            self._free.pop(), params, uniforms, matcher=matcher, top_logprobs=top_logprobs, stop_ids=stop_ids
        )
        if top_logprobs >= 0:
            request.logprobs = []
        self._requests[request_id] = request

    def admit(self, submit: Submit, matcher: Matcher | None = None) -> None:
        """`register` for a core's request."""
        stop_ids = tuple(submit.stop_token_ids)
        self.register(submit.request_id, submit.sampling, matcher, submit.top_logprobs, stop_ids)

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
        rows: list[RowRequest | None] = [self._requests.get(state.request_id) for state in states]
        self._sync_tables(rows, states)
        params = [row.params if row is not None else GREEDY for row in rows]
        slots = [row.slot if row is not None else 0 for row in rows]
        penalised = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
        occurring = [i for i, p in enumerate(params) if p.penalises_occurrences]
        sampled = [i for i, p in enumerate(params) if p.temperature > 0]
        constrained = [i for i, row in enumerate(rows) if row is not None and row.matcher is not None]
        bitmask = self._fill_masks(rows, states, constrained) if constrained else None
        wanting = [i for i, row in enumerate(rows) if row is not None and row.top_logprobs >= 0]
        pairs = enumerate(zip(rows, states, strict=True))
        banned = [(i, stop) for i, (row, state) in pairs for stop in banned_stops(row, state)]
        as_tensor = lambda values, dtype: torch.tensor(values, dtype=dtype, device=self._device)  # noqa: E731
        self._plan = Plan(
            slots=as_tensor(slots, torch.long),
            temperature=as_tensor([p.temperature for p in params], torch.float32),
            top_p=as_tensor([p.top_p for p in params], torch.float32),
            top_k=as_tensor([p.top_k for p in params], torch.long),
            min_p=as_tensor([p.min_p for p in params], torch.float32),
            penalty=as_tensor([p.repetition_penalty for p in params], torch.float32),
            uniform=as_tensor(
                [row.uniforms.random() if row is not None and row.uniforms else 0.0 for row in rows],
                torch.float64,
            ),
            penalised=as_tensor(penalised, torch.long) if penalised else None,
            penalised_slots=[slots[i] for i in penalised],
            occurring=as_tensor(occurring, torch.long) if occurring else None,
            occurring_slots=[slots[i] for i in occurring],
            presence=as_tensor([params[i].presence_penalty for i in occurring], torch.float32),
            frequency=as_tensor([params[i].frequency_penalty for i in occurring], torch.float32),
            sampled=as_tensor(sampled, torch.long) if sampled else None,
            constrained=as_tensor(constrained, torch.long) if constrained else None,
            bitmask=bitmask,
            banned=as_tensor(banned, torch.long).T if banned else None,
            logprob_rows=wanting,
            logprob_requests=[row for i in wanting if (row := rows[i]) is not None],
        )
        return torch.zeros(len(rows), dtype=torch.int32)

    def _fill_masks(
        self, rows: list[RowRequest | None], states: list[Any], constrained: list[int]
    ) -> Future[torch.Tensor]:
        """Feed each constrained row's matcher the tokens generated since the last step, then start its
        mask."""
        bitmask = allocate_bitmask(len(constrained), self._vocab_size)
        matchers: list[Matcher] = []
        for i in constrained:
            row, state = rows[i], states[i]
            assert row is not None and row.matcher is not None  # its prompt_length set by _sync_tables
            for token in since(
                state.initial_tokens, state.generated_tokens, row.prompt_length + row.accepted
            ):
                row.matcher.accept(token)
                row.accepted += 1
            matchers.append(row.matcher)
        device = self._device

        def fill() -> torch.Tensor:
            fill_masks(matchers, bitmask)
            return bitmask.to(device)

        return self._masks.submit(fill)

    def _sync_tables(self, rows: list[RowRequest | None], states: list[Any]) -> None:
        """Append new prompts and the tokens generated since the last step to the token tables, in place.

        A request the manager paused and re-queued comes back with its generated tokens moved into
        `initial_tokens`: the sequence is the same, and what was generated starts where the prompt first
        ended."""
        seen: tuple[list[int], list[list[int]]] = ([], [])
        generated: tuple[list[int], list[list[int]]] = ([], [])
        for row, state in zip(rows, states, strict=True):
            if row is None:
                continue
            initial, produced = state.initial_tokens, state.generated_tokens
            if row.prompt_length < 0:
                row.prompt_length = len(initial) + len(produced)
            if row.params.repetition_penalty != 1.0:
                seen[0].append(row.slot)
                seen[1].append(self._seen.catch_up(row.slot, row, initial, produced))
            if row.params.penalises_occurrences:
                generated[0].append(row.slot)
                generated[1].append(
                    self._generated.catch_up(row.slot, row, initial, produced, row.prompt_length)
                )
        self._seen.extend(*seen)
        self._generated.extend(*generated)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        plan = self._plan
        if plan is None or (
            plan.penalised is None
            and plan.occurring is None
            and plan.sampled is None
            and plan.constrained is None
            and plan.banned is None
            and not plan.logprob_rows
        ):
            return scores
        # In place: `scores` holds this step's logits, which the manager uses for nothing but its argmax.
        if plan.constrained is not None and plan.bitmask is not None:
            masked = scores.index_select(0, plan.constrained)
            apply_bitmask(masked, plan.bitmask.result())
            scores.index_copy_(0, plan.constrained, masked)
        if plan.banned is not None:
            scores[plan.banned[0], plan.banned[1]] = float("-inf")
        if plan.penalised is not None:
            penalised = plan.penalised
            seen, _ = self._seen.rows(plan.slots[penalised], plan.penalised_slots)
            rows = penalised.unsqueeze(-1)
            logits = scores[rows, seen]
            penalty = plan.penalty[penalised].unsqueeze(-1)
            scores[rows, seen] = torch.where(logits < 0, logits * penalty, logits / penalty)
        if plan.occurring is not None:
            tokens, counted = self._generated.rows(plan.slots[plan.occurring], plan.occurring_slots)
            penalise_occurrences(scores, plan.occurring, tokens, counted, plan.presence, plan.frequency)
        logp = None
        if plan.logprob_rows:
            logp = log_softmax_rows(scores, torch.tensor(plan.logprob_rows, device=scores.device))
            # Greedy rows take the argmax; a sampled row's pick replaces it below.
            picked = logp.argmax(-1)
        chosen = None
        if plan.sampled is not None:
            sampled = plan.sampled
            # Every row sampled: the sampler may use `scores` as its scratch space (the manager needs nothing
            # of it but the argmax, which the +inf below decides); else it works on a copy of those rows.
            every = len(sampled) == scores.shape[0]
            pick = (lambda t: t) if every else (lambda t: t.index_select(0, sampled))
            chosen = draw(
                pick(scores),
                pick(plan.temperature),
                pick(plan.top_p),
                pick(plan.uniform),
                in_place=True,
                top_k=pick(plan.top_k),
                min_p=pick(plan.min_p),
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
