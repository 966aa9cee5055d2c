"""Per-request sampling that is reproducible under concurrency: the arithmetic both engines share.

`model.generate` samples with torch's global random state, which concurrent requests would share. Instead
each request owns a seeded stream of uniform numbers (one per generated token), and `draw` turns a batch of
logits rows plus one uniform per row into tokens with tensor operations over all rows at once:

- temperature, then top-p (the smallest set of most likely tokens whose probability reaches `top_p`, the
  same set as transformers' `TopPLogitsWarper`), then inverse-CDF sampling over that set in vocabulary order;
- the nucleus is looked for among the `CANDIDATES` most likely tokens first (one partial `topk`, no full
  sort); only a row whose nucleus is larger (a flat distribution, or `top_p` = 1) takes the full-vocabulary
  path, which picks the same token for the same uniform.

The simple engine uses it through `SeededSampler` (a logits processor for `generate`, after transformers'
own repetition penalty); the batch engine through `BatchSampler` (`batch_sampler.py`). So a seed gives the
same reply on both engines, whatever else is running.
"""

from __future__ import annotations

import random
import secrets

import torch
from transformers import LogitsProcessor, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from qwen_chat.sampling_params import SamplingParams

# Most likely tokens searched for the nucleus before falling back to the whole vocabulary. A trained
# model's nucleus at the defaults (temperature 0.7, top_p 0.8) is a handful to a few dozen tokens.
CANDIDATES = 512


def uniform_stream(seed: int | None) -> random.Random:
    """One request's source of uniforms: seeded when asked, else from the OS."""
    return random.Random(seed if seed is not None else secrets.randbits(63))


def draw(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    uniform: torch.Tensor,
    in_place: bool = False,
) -> torch.Tensor:
    """Token ids [rows] for logits [rows, vocab], per-row temperature (> 0), top_p and uniform in [0, 1).

    `in_place` lets it overwrite `logits` (float32) instead of copying them: one copy of a 16-row batch of
    the 151,936-token vocabulary costs about as much as the arithmetic."""
    weights = logits.float() if in_place else logits.float().clone()
    vocab = weights.shape[-1]
    k = min(CANDIDATES, vocab)
    top, index = weights.topk(k, dim=-1)  # most likely first; the order is the same after temperature
    inverse_temperature = temperature.reciprocal().unsqueeze(-1)
    # exp((logit - max) / temperature), in place: the softmax's numerator over the whole vocabulary.
    weights.sub_(top[:, :1]).mul_(inverse_temperature).exp_()
    total = weights.sum(-1, keepdim=True)
    probs = ((top - top[:, :1]) * inverse_temperature).exp() / total
    cumulative = probs.cumsum(-1)
    keep = (cumulative - probs) < top_p.unsqueeze(-1)  # the mass before a token is short of top_p
    keep[:, 0] = True  # the most likely token always (a top_p that rounds to 0 in float32 keeps it alone)
    chosen = _inverse_cdf(index, probs * keep, uniform)
    # A nucleus that may reach past the candidates: every candidate kept and more mass still wanted.
    overflow = keep[:, -1] & (cumulative[:, -1] < top_p) if k < vocab else torch.zeros_like(keep[:, -1])
    if bool(overflow.any()):
        rows = overflow.nonzero().squeeze(-1)
        chosen[rows] = _draw_full(weights[rows] / total[rows], top_p[rows], uniform[rows])
    return chosen


def _draw_full(probs: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    if bool((top_p < 1.0).any()):
        ordered, order = probs.sort(dim=-1, descending=True)
        keep_sorted = (ordered.cumsum(-1) - ordered) < top_p.unsqueeze(-1)
        keep_sorted[:, 0] = True
        keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
        probs = probs * keep
    index = torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)
    return _inverse_cdf(index, probs, uniform)


def _inverse_cdf(index: torch.Tensor, weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative weight, in vocabulary order, first passes uniform times the total weight."""
    in_vocab_order = index.argsort(dim=-1)
    index = index.gather(-1, in_vocab_order)
    weights = weights.gather(-1, in_vocab_order)
    cumulative = weights.cumsum(-1)
    target = uniform.to(cumulative.dtype).unsqueeze(-1) * cumulative[:, -1:]
    position = torch.searchsorted(cumulative, target, right=True)
    # Rounding can put the target at the very end: take the last token with any weight.
    last = (weights > 0).long().cumsum(-1).argmax(-1, keepdim=True)
    return index.gather(-1, torch.minimum(position, last)).squeeze(-1)


class SeededSampler(LogitsProcessor):
    """For `generate` (one row): draws the token with `draw` and leaves it the only finite score."""

    def __init__(self, params: SamplingParams) -> None:
        self._temperature = torch.tensor([params.temperature])
        self._top_p = torch.tensor([params.top_p])
        self._uniforms = uniform_stream(params.seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        device = scores.device
        uniform = torch.tensor([self._uniforms.random()], dtype=torch.float64, device=device)
        chosen = draw(scores, self._temperature.to(device), self._top_p.to(device), uniform)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(-1, chosen.unsqueeze(-1), 0.0)  # type: ignore[return-value]


def logits_processors(
    params: SamplingParams, before_sampling: tuple[LogitsProcessor, ...] = ()
) -> LogitsProcessorList:
    """Repetition penalty (if any), `before_sampling` (a grammar mask, a log-probability recorder), then
    seeded sampling unless the request is greedy (temperature 0)."""
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    processors.extend(before_sampling)
    if params.temperature > 0:
        processors.append(SeededSampler(params))
    return processors
