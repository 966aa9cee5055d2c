"""Per-request sampling that is reproducible under concurrency: the arithmetic both engines share.

`model.generate` samples with torch's global random state, which concurrent requests would share. Instead
each request owns a seeded stream of uniform numbers (one per generated token), and `draw` turns a batch of
logits rows plus one uniform per row into tokens with tensor operations over all rows at once:

- temperature, then top_k (the k most likely tokens and any tied with the k-th, as transformers'
  `TopKLogitsWarper`), top_p (the smallest set of most likely tokens whose probability, renormalised over what
  top_k kept, reaches `top_p`, as `TopPLogitsWarper`) and min_p (tokens at least `min_p` times as likely as
  the most likely one, as `MinPLogitsWarper`): transformers' order; then inverse-CDF sampling over what all
  three keep, in vocabulary order;
- the kept set is looked for among the `CANDIDATES` most likely tokens first (one partial `topk`, no full
  sort); only a row whose set may be larger (a flat distribution, `top_p` = 1 without top_k) takes the
  full-vocabulary path, which picks the same token for the same uniform.

`penalise_occurrences` applies OpenAI's presence and frequency penalties to many rows at once, from each row's
generated tokens. The simple engine uses both through `logits_processors` (processors for `generate`, after
transformers' own repetition penalty); the batch engine through `BatchSampler` (`batch_sampler.py`). So a
seed gives the same reply on both engines, whatever else is running.
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
    top_k: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
    static: bool = False,
) -> torch.Tensor:
    """Token ids [rows] for logits [rows, vocab], per-row temperature (> 0), top_p, uniform in [0, 1), and
    top_k (0: every token) and min_p (0: off) when given.

    `in_place` lets it overwrite `logits` (float32) instead of copying them: one copy of a 16-row batch of
    the 151,936-token vocabulary costs about as much as the arithmetic.

    `static` (a CUDA graph may capture the call): the same operations whatever the logits, and none that
    waits for the device. A row that filters nothing (top_p 1, no top_k or min_p) still draws from the whole
    vocabulary; a filtering row whose kept set reaches past the `CANDIDATES` most likely tokens draws from
    those candidates instead of sorting the vocabulary (a nucleus of over 512 tokens is cut there)."""
    weights = logits.float() if in_place else logits.float().clone()
    vocab = weights.shape[-1]
    k = min(CANDIDATES, vocab)
    top, index = weights.topk(k, dim=-1)  # most likely first; the order is the same after temperature
    inverse_temperature = temperature.reciprocal().unsqueeze(-1)
    # exp((logit - max) / temperature), in place: the softmax's numerator over the whole vocabulary.
    weights.sub_(top[:, :1]).mul_(inverse_temperature).exp_()
    total = weights.sum(-1, keepdim=True)
    probs = ((top - top[:, :1]) * inverse_temperature).exp() / total
    rows = probs.shape[0]
    top_k = top_k if top_k is not None else torch.zeros(rows, dtype=torch.long, device=probs.device)
    min_p = min_p if min_p is not None else torch.zeros(rows, dtype=probs.dtype, device=probs.device)
    keep = _keep(probs, top_p, top_k, min_p)
    chosen = _inverse_cdf(index, probs * keep, uniform)
    # A set that may reach past the candidates: the last one kept, or a top_k beyond them.
    if k == vocab:
        return chosen
    overflow = keep[:, -1] | (top_k > k)
    if static:
        whole = _inverse_cdf_in_order(weights / total, uniform)  # already in vocabulary order: no sort
        return torch.where(overflow & ~_filters(top_p, top_k, min_p), whole, chosen)
    if bool(overflow.any()):
        over = overflow.nonzero().squeeze(-1)
        chosen[over] = _draw_full(
            weights[over] / total[over], top_p[over], top_k[over], min_p[over], uniform[over]
        )
    return chosen


def _filters(top_p: torch.Tensor, top_k: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Which rows top_p, top_k or min_p may cut (the others keep every token)."""
    return (top_p < 1.0) | (top_k > 0) | (min_p > 0.0)


def _keep(
    ordered: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Which of `ordered` (probabilities after temperature, most likely first, normalised over the whole
    vocabulary) top_k, then top_p, then min_p keep; the most likely always."""
    width = ordered.shape[-1]
    limited = (top_k > 0) & (top_k <= width)  # a top_k that these tokens cover
    kth = ordered.gather(-1, (top_k.clamp(1, width) - 1).unsqueeze(-1))
    keep = (ordered >= kth) | ~limited.unsqueeze(-1)  # ties with the k-th stay
    kept = ordered * keep
    mass = torch.where(limited, kept.sum(-1), torch.ones_like(top_p))  # top_p renormalises over top_k's set
    keep &= (kept.cumsum(-1) - kept) < (top_p * mass).unsqueeze(-1)  # the mass before a token is short of it
    keep &= ordered >= (min_p * ordered[:, 0]).unsqueeze(-1)
    keep[:, 0] = True  # the most likely token always (a top_p that rounds to 0 in float32 keeps it alone)
    return keep


def _draw_full(
    probs: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor, min_p: torch.Tensor, uniform: torch.Tensor
) -> torch.Tensor:
    filtering = _filters(top_p, top_k, min_p)
    if bool(filtering.any()):
        ordered, order = probs.sort(dim=-1, descending=True)
        keep = torch.empty_like(ordered, dtype=torch.bool).scatter_(
            -1, order, _keep(ordered, top_p, top_k, min_p)
        )
        # A row that filters nothing keeps every token, whatever rows beside it filter.
        probs = probs * (keep | ~filtering.unsqueeze(-1))
    return _inverse_cdf_in_order(probs, uniform)


def penalise_occurrences(
    scores: torch.Tensor,
    rows: torch.Tensor,
    tokens: torch.Tensor,
    counted: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
) -> None:
    """OpenAI's presence and frequency penalties, in place on `scores` [R, vocab]: for each of `rows` [n],
    logit[t] -= frequency * count(t) + presence * (count(t) > 0), count(t) being how often t is among the
    row's `tokens` [n, width] where `counted` [n, width]. Only the rows' seen tokens are touched."""
    ordered = torch.where(counted, tokens, -1).sort(-1).values  # uncounted entries first, as -1
    counts = torch.searchsorted(ordered, ordered, right=True) - torch.searchsorted(ordered, ordered)
    last = ordered[:, -1:]  # the row's largest counted id; -1 when it has none
    valid = ordered >= 0
    # Uncounted entries repeat the row's last counted token (same value written twice), or leave it at 0.
    counts = torch.where(valid, counts, counts[:, -1:]) * (last >= 0)
    ordered = torch.where(valid, ordered, last).clamp(min=0)
    penalty = frequency.unsqueeze(-1) * counts + presence.unsqueeze(-1) * (counts > 0)
    index = rows.unsqueeze(-1).expand_as(ordered)
    scores[index, ordered] = scores[index, ordered] - penalty.to(scores.dtype)


def _inverse_cdf(index: torch.Tensor, weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative weight, in vocabulary order, first passes uniform times the total weight."""
    in_vocab_order = index.argsort(dim=-1)
    index = index.gather(-1, in_vocab_order)
    position = _inverse_cdf_in_order(weights.gather(-1, in_vocab_order), uniform)
    return index.gather(-1, position.unsqueeze(-1)).squeeze(-1)


def _inverse_cdf_in_order(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """`_inverse_cdf` over weights already in vocabulary order: the position picked in each row."""
    cumulative = weights.cumsum(-1)
    target = uniform.to(cumulative.dtype).unsqueeze(-1) * cumulative[:, -1:]
    position = torch.searchsorted(cumulative, target, right=True)
    # Rounding can put the target at the very end: take the last token with any weight.
    last = (weights > 0).long().cumsum(-1).argmax(-1, keepdim=True)
    return torch.minimum(position, last).squeeze(-1)


class SeededSampler(LogitsProcessor):
    """For `generate` (one row): draws the token with `draw` and leaves it the only finite score."""

    def __init__(self, params: SamplingParams) -> None:
        self._temperature = torch.tensor([params.temperature])
        self._top_p = torch.tensor([params.top_p])
        self._top_k = torch.tensor([params.top_k])
        self._min_p = torch.tensor([params.min_p])
        self._uniforms = uniform_stream(params.seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        device = scores.device
        uniform = torch.tensor([self._uniforms.random()], dtype=torch.float64, device=device)
        chosen = draw(
            scores,
            self._temperature.to(device),
            self._top_p.to(device),
            uniform,
            top_k=self._top_k.to(device),
            min_p=self._min_p.to(device),
        )
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(-1, chosen.unsqueeze(-1), 0.0)  # type: ignore[return-value]


class OccurrencePenalty(LogitsProcessor):
    """For `generate` (one row): the presence and frequency penalties over the tokens after the prompt."""

    def __init__(self, params: SamplingParams, prompt_length: int) -> None:
        self._prompt_length = prompt_length
        self._presence = torch.tensor([params.presence_penalty])
        self._frequency = torch.tensor([params.frequency_penalty])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self._prompt_length :]
        if generated.shape[1]:
            device = scores.device
            counted = torch.ones_like(generated, dtype=torch.bool)
            rows = torch.zeros(1, dtype=torch.long, device=device)
            penalise_occurrences(
                scores, rows, generated, counted, self._presence.to(device), self._frequency.to(device)
            )
        return scores


def logits_processors(
    params: SamplingParams, prompt_length: int, before_sampling: tuple[LogitsProcessor, ...] = ()
) -> LogitsProcessorList:
    """Repetition penalty (if any), presence and frequency penalties (if any), `before_sampling` (a grammar
    mask, a log-probability recorder), then seeded sampling unless the request is greedy (temperature 0)."""
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.penalises_occurrences:
        processors.append(OccurrencePenalty(params, prompt_length))
    processors.extend(before_sampling)
    if params.temperature > 0:
        processors.append(SeededSampler(params))
    return processors
