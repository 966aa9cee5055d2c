"""Per-request sampling that is reproducible under concurrency, for both engines.

`model.generate` samples with torch's global random state, which concurrent requests would share. Instead
each request draws its tokens from its own seeded `torch.Generator`, and the decoder around it runs greedy
over a distribution with all its mass on the drawn token:
- `SeededSampler` (the simple engine): a logits processor for `generate`, after transformers' own
  repetition penalty, temperature and top-p processors;
- `PerRequestSampler` (the batch engine): one processor inside the batching manager's logits step that
  applies each row's own parameters, with the same arithmetic.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)

from qwen_chat.sampling_params import SamplingParams


class SeededSampler(LogitsProcessor):
    def __init__(self, params: SamplingParams, device: torch.device) -> None:
        self._warpers = LogitsProcessorList([TemperatureLogitsWarper(params.temperature)])
        if params.top_p < 1.0:
            self._warpers.append(TopPLogitsWarper(params.top_p))
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        warped = self._warpers(input_ids, scores)
        probs = torch.softmax(warped.float(), dim=-1)
        chosen = torch.multinomial(probs, num_samples=1, generator=self._generator)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(-1, chosen, 0.0)  # type: ignore[return-value]


def logits_processors(params: SamplingParams, device: torch.device) -> LogitsProcessorList:
    """Repetition penalty (if any), then seeded sampling unless the request is greedy (temperature 0)."""
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.temperature > 0:
        processors.append(SeededSampler(params, device))
    return processors


@dataclass(frozen=True)
class _Sampling:
    temperature: float
    top_p: float
    repetition_penalty: float
    generator: torch.Generator | None


class PerRequestSampler(ContinuousBatchingLogitsProcessor):
    """Applies each row's own repetition penalty, temperature and top-p, and draws its token from the
    request's own seeded generator; greedy rows keep their scores (the manager itself takes the argmax).

    It runs on the manager's thread: `prepare_tensor_args` receives the requests whose logits rows the
    following `__call__` gets, in row order (the manager's synchronous mode, its default on CPU).
    """

    def __init__(self) -> None:
        # Parameters are looked up by request id, not passed to add_request.
        self.supported_kwargs: dict[str, type] = {}
        self.ignored_kwargs: tuple[str, ...] = ()
        self._params: dict[str, _Sampling] = {}
        self._rows: list[Any] = []

    def register(self, request_id: str, params: SamplingParams, device: torch.device) -> None:
        generator = None
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            generator = torch.Generator(device=device).manual_seed(seed)
        self._params[request_id] = _Sampling(
            params.temperature, params.top_p, params.repetition_penalty, generator
        )

    def forget(self, request_id: str) -> None:
        self._params.pop(request_id, None)

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        self._rows = [future.state for future in requests_with_new_token]
        return torch.zeros(len(self._rows), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        greedy = _Sampling(0.0, 1.0, 1.0, None)
        out = scores
        for row, state in enumerate(self._rows[: scores.shape[0]]):
            params = self._params.get(state.request_id, greedy)
            if params.repetition_penalty == 1.0 and params.generator is None:
                continue
            if out is scores:
                out = scores.clone()
            out[row] = _sample_row(scores[row], state, params)
        return out


def _sample_row(row: torch.Tensor, state: Any, params: _Sampling) -> torch.Tensor:
    """The same arithmetic as transformers' RepetitionPenalty/Temperature/TopP processors in `generate`."""
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(
            state.initial_tokens + state.generated_tokens, dtype=torch.long, device=row.device
        )
        penalised = row.gather(0, seen)
        penalised = torch.where(
            penalised < 0, penalised * params.repetition_penalty, penalised / params.repetition_penalty
        )
        row = row.scatter(0, seen, penalised)
    if params.generator is None:
        return row
    warped = row / params.temperature
    if params.top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(warped, descending=False)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative <= (1 - params.top_p)
        remove[-1:] = False  # keep at least the most likely token
        warped = warped.masked_fill(remove.scatter(0, sorted_index, remove), float("-inf"))
    chosen = torch.multinomial(warped.float().softmax(-1), 1, generator=params.generator)
    return torch.full_like(row, float("-inf")).scatter_(0, chosen, 0.0)
