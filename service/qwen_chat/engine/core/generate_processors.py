"""What a request's grammar and log-probabilities need from `model.generate` (the simple engine).

`generate` runs its logits processors in order on one row: the repetition penalty, `GrammarMask` (feeds the
grammar the previous token, then masks the row), `LogprobRecorder` (keeps the row's log-probabilities as
the sampler sees them), then `SeededSampler`. The streamer asks the recorder for each token it receives.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from qwen_chat.engine.core.grammar import Matcher, allocate_bitmask, apply_bitmask
from qwen_chat.engine.core.logprobs import token_logprobs
from qwen_chat.engine.wire import TokenLogprob


class GrammarMask(LogitsProcessor):
    def __init__(self, matcher: Matcher, prompt_length: int, vocab_size: int) -> None:
        self._matcher = matcher
        self._accepted = prompt_length
        self._bitmask = allocate_bitmask(1, vocab_size)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for token in input_ids[0, self._accepted :].tolist():
            self._matcher.accept(token)
        self._accepted = input_ids.shape[1]
        self._matcher.fill(self._bitmask, 0)
        apply_bitmask(scores, self._bitmask.to(scores.device))
        return scores


class LogprobRecorder(LogitsProcessor):
    """Keeps the last row's log-probabilities; `take(token)` turns them into that token's entry."""

    def __init__(self, top: int) -> None:
        self._top = top
        self._logp: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._logp = scores.float().log_softmax(-1)
        return scores

    def take(self, token: int) -> TokenLogprob | None:
        logp, self._logp = self._logp, None
        if logp is None:
            return None
        chosen = torch.tensor([token], device=logp.device)
        return token_logprobs(logp, chosen, [self._top])[0]
