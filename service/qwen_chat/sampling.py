"""Per-request sampling that is reproducible under concurrency.

`model.generate` samples with torch's global random state, which concurrent requests would share. Instead
`generate` runs greedy, and this logits processor draws the token itself from the request's own seeded
`torch.Generator`, after transformers' own repetition penalty, temperature and top-p processors, then
hands greedy search a distribution with all its mass on that token.
"""

from __future__ import annotations

import secrets

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from qwen_chat.engine import SamplingParams


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
