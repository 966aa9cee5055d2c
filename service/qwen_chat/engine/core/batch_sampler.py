"""The batch engine's sampler: each request's own penalties, temperature, top_k, top_p, min_p and seed,
applied to every row of a step with one set of tensor operations inside transformers' batching manager.

It is a `ContinuousBatchingLogitsProcessor` appended to the manager's processor list; the manager itself runs
greedy (`do_sample=False`) and takes the argmax of what it returns:
- `prepare_tensor_args` receives the requests whose logits rows the following `__call__` gets, in row order,
  and returns their slots (`slot_tables.py`), which the manager copies into the step's own inputs. A request
  new to its slot gets its row of the tables there (its parameters, the tokens it has seen); each sampled row
  gets the next uniform from its request's own stream.
- `__call__` reads nothing else: per-slot tables on the device, of fixed shape and address. In the order
  repetition penalty, presence and frequency penalties, then `sampling.draw` for sampled rows, whose token
  is set to +inf (greedy rows are left to the manager's argmax); then the step adds each row's token to its
  slot's tables on the device. On CUDA it runs `static`: the same operations every step (a CUDA graph can
  capture it; async batching can prepare the next step before this one's tokens reach the host). On CPU it
  skips what no row of the step needs.
- What needs the host to know the previous step's tokens runs only in synchronous, eager steps, which the
  batch core asks the manager for while such a request runs (`needs_sync`): a `response_format`'s grammar
  mask (engine/core/grammar.py; the plan feeds each matcher the tokens generated since the last step and
  fills the allowed-token bitmasks on a thread of its own, outside the GIL, while the forward runs), the stop
  tokens of rows short of their `min_tokens`, and log-probabilities (engine/core/logprobs.py, kept until the
  step's outputs reach the router: `take_logprobs`). The mask comes first, so penalties, sampling and the
  argmax only ever see allowed tokens.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from qwen_chat.engine.core.grammar import Matcher, allocate_bitmask, apply_bitmask, fill_masks
from qwen_chat.engine.core.logprobs import log_softmax_rows, token_logprobs
from qwen_chat.engine.core.sampler_rows import Plan, RowRequest, banned_stops
from qwen_chat.engine.core.sampling import draw, uniform_stream
from qwen_chat.engine.core.slot_tables import SlotTables
from qwen_chat.engine.hf_internals import ContinuousBatchingLogitsProcessor
from qwen_chat.engine.wire import Submit, TokenLogprob
from qwen_chat.sampling_params import SamplingParams


class BatchSampler(ContinuousBatchingLogitsProcessor):
    def __init__(
        self,
        slots: int,
        vocab_size: int,
        device: torch.device,
        static: bool | None = None,
        rows: int | None = None,
    ) -> None:
        """`rows`: the most logits rows a step holds (the manager's max_requests_per_batch; None: slots)."""
        # Parameters are looked up by request id, not passed to add_request.
        self.supported_kwargs: dict[str, type] = {}
        self.ignored_kwargs: tuple[str, ...] = ()
        self.static = device.type == "cuda" if static is None else static
        self.tables = SlotTables(slots, vocab_size, device)
        self._slots = slots
        self._vocab_size = vocab_size
        self._masks = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")
        self._free = list(range(slots - 1, -1, -1))
        self._requests: dict[str, RowRequest] = {}
        self._syncing: set[str] = set()  # the requests that need synchronous steps (asked every loop turn)
        self._plan = Plan(0, False, False, False)
        self._arg = torch.full((rows or slots,), self.tables.null, dtype=torch.int32)
        self._prepares = 0  # steps prepared

    @property
    def active(self) -> int:
        return len(self._requests)

    @property
    def needs_sync(self) -> bool:
        """Some request's steps need the previous step's tokens on the host (`RowRequest.needs_sync`)."""
        return bool(self._syncing)

    def register(
        self,
        request_id: str,
        params: SamplingParams,
        matcher: Matcher | None = None,
        top_logprobs: int = -1,
        stop_ids: tuple[int, ...] = (),
    ) -> None:
        """Before the request reaches the manager; raises IndexError when every slot is taken. Host only: its
        row of the tables is written by the step that first holds it."""
        uniforms = uniform_stream(params.seed) if params.temperature > 0 else None
        request = RowRequest(
            self._free.pop(), params, uniforms, matcher=matcher, top_logprobs=top_logprobs, stop_ids=stop_ids
        )
        if top_logprobs >= 0:
            request.logprobs = []
        self._requests[request_id] = request
        if request.needs_sync:
            self._syncing.add(request_id)

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
        self._syncing.discard(request_id)
        if request is not None:
            self._free.append(request.slot)

    # --- the manager's side, on its thread ---

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(self.tables.null)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        states = [future.state for future in requests_with_new_token]
        rows: list[RowRequest | None] = [self._requests.get(state.request_id) for state in states]
        live = [row for row in rows if row is not None]
        self._prepares += 1
        for row, state in zip(rows, states, strict=True):
            if row is not None:
                self._follow(row, state)
        drawing = [row for row in live if row.uniforms is not None]
        self.tables.draw_next([row.slot for row in drawing], [_uniform(row) for row in drawing])
        self._plan = Plan(
            rows=len(rows),
            penalised=any(row.params.repetition_penalty != 1.0 for row in live),
            occurring=any(row.params.penalises_occurrences for row in live),
            sampled=len(drawing),
            **(self._host_work(rows, states) if any(row.needs_sync for row in live) else {}),
        )
        arg = self._arg.fill_(self.tables.null)
        arg[: len(rows)] = torch.tensor([row.slot if row is not None else self.tables.null for row in rows])
        return arg

    def _follow(self, row: RowRequest, state: Any) -> None:
        """Bring the row's tables in line with its request before its step. They are (re)written from the
        request's state at its first step; at its first since the manager paused it and re-queued it with
        its generated tokens moved into `initial_tokens` (the sequence is the same, and what was generated
        starts where the prompt first ended); and when they hold tokens of steps whose results the manager
        discarded (under async batching, a request paused while its step was in flight loses that step's
        token): those steps' uniforms are drawn again, so a seed still gives the same reply."""
        initial, produced = state.initial_tokens, state.generated_tokens
        if row.prompt_length < 0:
            row.prompt_length = len(initial) + len(produced)
        generated = len(initial) + len(produced) - row.prompt_length
        lag = row.added - generated  # 1 while the step before is in flight (async), else 0
        start = row.initial_length != len(initial)
        if lag > 0 and row.last_prepare != self._prepares - 1:
            row.replay = row.drawn[-lag:]
            start = True
        if start:
            row.initial_length, row.added = len(initial), generated
            sequence = [*initial, *produced]
            self.tables.start(row.slot, row.params, sequence, sequence[row.prompt_length :])
        row.added += 1  # the step adds its token on the device
        row.last_prepare = self._prepares

    def _host_work(self, rows: list[RowRequest | None], states: list[Any]) -> dict[str, Any]:
        """What only the host can do for a step: grammar masks, stop tokens banned, log-probabilities."""
        constrained = [i for i, row in enumerate(rows) if row is not None and row.matcher is not None]
        wanting = [i for i, row in enumerate(rows) if row is not None and row.top_logprobs >= 0]
        pairs = enumerate(zip(rows, states, strict=True))
        banned = [(i, stop) for i, (row, state) in pairs for stop in banned_stops(row, state)]
        device = self.tables.seen.device
        return {
            "constrained": torch.tensor(constrained, device=device) if constrained else None,
            "bitmask": self._fill_masks(rows, states, constrained) if constrained else None,
            "banned": torch.tensor(banned, device=device).T if banned else None,
            "logprob_rows": tuple(wanting),
            "logprob_requests": tuple(row for i in wanting if (row := rows[i]) is not None),
        }

    def _fill_masks(
        self, rows: list[RowRequest | None], states: list[Any], constrained: list[int]
    ) -> Future[torch.Tensor]:
        """Feed each constrained row's matcher the tokens generated since the last step, then start its
        mask."""
        bitmask = allocate_bitmask(len(constrained), self._vocab_size)
        matchers: list[Matcher] = []
        for i in constrained:
            row, state = rows[i], states[i]
            assert row is not None and row.matcher is not None  # its prompt_length set by _follow
            sequence = [*state.initial_tokens, *state.generated_tokens]
            for token in sequence[row.prompt_length + row.accepted :]:
                row.matcher.accept(token)
                row.accepted += 1
            matchers.append(row.matcher)
        device = self.tables.seen.device

        def fill() -> torch.Tensor:
            fill_masks(matchers, bitmask)
            return bitmask.to(device)

        return self._masks.submit(fill)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor | None) -> torch.Tensor:
        """In place: `scores` holds this step's logits, which the manager uses for nothing but its argmax."""
        plan, static = self._plan, self.static
        arg = tensor_arg if tensor_arg is not None else self._arg.to(scores.device)
        slots = arg[: scores.shape[0]].long()
        if plan.host_work:
            if scores.is_cuda and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("a step with a grammar, min_tokens or logprobs row reached a CUDA graph")
            _mask(scores, plan)
        tables = self.tables
        if static:
            _penalise_all(scores, slots, tables)
        else:
            _penalise_seen(scores, slots, tables, plan)
        logp = None
        if plan.logprob_rows:
            logp = log_softmax_rows(scores, torch.tensor(plan.logprob_rows, device=scores.device))
        every = False
        if static or plan.sampled:
            temperature = tables.temperature[slots]
            sampled = temperature > 0
            # Every row sampled (known on the host): `scores` is the draw's scratch space, the +inf below all
            # the argmax needs of it.
            every = not static and plan.sampled == plan.rows
            chosen = draw(
                scores if every else scores.clone(),
                torch.where(sampled, temperature, 1.0),  # a greedy row's draw is computed, then ignored
                tables.top_p[slots],
                tables.uniform[slots],
                in_place=True,
                top_k=tables.top_k[slots],
                min_p=tables.min_p[slots],
                static=static,
            ).unsqueeze(-1)
            picked = scores.gather(-1, chosen)
            scores.scatter_(-1, chosen, torch.where(sampled.unsqueeze(-1), float("inf"), picked))
        tokens = chosen.squeeze(-1) if every else scores.argmax(-1)  # the manager's own pick
        tables.add(slots, tokens)
        if logp is not None:
            rows = torch.tensor(plan.logprob_rows, device=scores.device)
            top = [request.top_logprobs for request in plan.logprob_requests]
            entries = token_logprobs(logp, tokens.index_select(0, rows), top)
            for request, entry in zip(plan.logprob_requests, entries, strict=True):
                if request.logprobs is not None:
                    request.logprobs.append(entry)
        return scores


def _uniform(row: RowRequest) -> float:
    """The next uniform of a sampled row: one its discarded step drew, else the next of its stream."""
    assert row.uniforms is not None
    uniform = row.replay.pop(0) if row.replay else row.uniforms.random()
    row.drawn = [*row.drawn[-1:], uniform]
    return uniform


def _penalise_all(scores: torch.Tensor, slots: torch.Tensor, tables: SlotTables) -> None:
    """Repetition, presence and frequency penalties over every row and token: the same operations whatever
    the step holds (a row without a penalty gets its logits back unchanged: x * 1, x / 1, x - 0)."""
    penalty = tables.penalty[slots].unsqueeze(-1)
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    scores.copy_(torch.where(tables.seen[slots], penalised, scores))
    counts = tables.counts[slots]
    frequency, presence = tables.frequency[slots].unsqueeze(-1), tables.presence[slots].unsqueeze(-1)
    scores.sub_(frequency * counts + presence * (counts > 0))


def _penalise_seen(scores: torch.Tensor, slots: torch.Tensor, tables: SlotTables, plan: Plan) -> None:
    """The same numbers, computed for the tokens each row has seen only (its generated ones among them), and
    only when some row of the step has the penalty (an eager step: on CPU, the vocabulary-wide operations
    cost more)."""
    if not (plan.penalised or plan.occurring):
        return
    rows, ids = tables.seen.index_select(0, slots).nonzero(as_tuple=True)
    if plan.penalised:
        logits, penalty = scores[rows, ids], tables.penalty[slots][rows]
        scores[rows, ids] = torch.where(logits < 0, logits * penalty, logits / penalty)
    if plan.occurring:
        count = tables.counts[slots[rows], ids]
        frequency, presence = tables.frequency[slots][rows], tables.presence[slots][rows]
        scores[rows, ids] -= frequency * count + presence * (count > 0)


def _mask(scores: torch.Tensor, plan: Plan) -> None:
    """The grammar masks of constrained rows, then the stop tokens of rows short of their min_tokens."""
    if plan.constrained is not None and plan.bitmask is not None:
        masked = scores.index_select(0, plan.constrained)
        apply_bitmask(masked, plan.bitmask.result())
        scores.index_copy_(0, plan.constrained, masked)
    if plan.banned is not None:
        scores[plan.banned[0], plan.banned[1]] = float("-inf")
