"""Log-probabilities of the tokens a sampler picked, for OpenAI's `logprobs` / `top_logprobs`.

Both engines read them from the row their sampler saw: the model's logits after the repetition penalty and
the grammar mask, before temperature and top-p (vLLM's "processed" logprobs without the temperature, so a
token's log-probability does not depend on how boldly it was sampled). Only the rows that asked are
computed: one log-softmax and one partial `topk` per such row.
"""

from __future__ import annotations

import torch

from qwen_chat.engine.wire import TokenLogprob

# What a token the grammar rules out reports (log 0 is -inf, which JSON cannot carry), as vLLM does.
FLOOR = -9999.0


def log_softmax_rows(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The rows' log-probabilities [len(rows), vocab], a copy (the sampler may overwrite `scores`)."""
    return scores.index_select(0, rows).float().log_softmax(-1)


def token_logprobs(logp: torch.Tensor, chosen: torch.Tensor, top: list[int]) -> list[TokenLogprob]:
    """Per row of `logp`: the chosen token's log-probability and the `top[i]` likeliest tokens'."""
    picked = logp.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).clamp(min=FLOOR).tolist()
    k = max(top, default=0)
    if k == 0:
        return [TokenLogprob(value, [], []) for value in picked]
    values, ids = logp.topk(k, dim=-1)
    values = values.clamp(min=FLOOR)
    values_list, ids_list = values.tolist(), ids.tolist()
    return [
        TokenLogprob(value, ids_list[i][: top[i]], values_list[i][: top[i]]) for i, value in enumerate(picked)
    ]
