"""The batching manager's output router, replaced by the batch core's (`batch.py`)."""

from __future__ import annotations

from typing import Any

from qwen_chat.engine.core.batch_sampler import BatchSampler
from qwen_chat.engine.hf_internals import OutputRouter, RequestStatus
from qwen_chat.engine.wire import Row, RowState


class StepRouter(OutputRouter):
    """The manager's output router, replaced: each step's outputs become one call of `emit` with the new
    token ids of every request still tracked. Cancelled requests are untracked at once, so a token from
    the step in flight is dropped here. A request's first row says how many of its prompt tokens the
    manager found in its prefix cache (`prefix_hit`, on the manager's thread) of how many it looked up."""

    def __init__(self, emit: Any, sampler: BatchSampler) -> None:
        super().__init__()
        self._emit = emit
        self._sampler = sampler
        self._seen: dict[str, int] = {}  # request id -> generated tokens already emitted
        self._prompts: dict[str, int] = {}  # request id -> prompt tokens, until its first row
        self._hits: dict[str, int] = {}  # request id -> prompt tokens found in the prefix cache

    def track(self, request_id: str, prompt_tokens: int = 0) -> None:
        self._seen[request_id] = 0
        self._prompts[request_id] = prompt_tokens

    def untrack(self, request_id: str) -> None:
        self._seen.pop(request_id, None)
        self._prompts.pop(request_id, None)
        self._hits.pop(request_id, None)

    def prefix_hit(self, request_id: str, tokens: int) -> None:
        """A prefix-cache lookup of the manager found `tokens` of a request's prompt. The manager looks a
        waiting request up at each scheduling pass, and again when it re-queues one: the last lookup before
        the request's first row is the one its prefill used. After that row, a lookup (a request paused and
        re-queued) finds its own reply: not a hit."""
        if request_id in self._prompts:
            self._hits[request_id] = tokens

    def deliver(self, output: Any) -> None:
        self.deliver_batch([output])

    def deliver_batch(self, outputs: list[Any]) -> None:
        rows: list[Row] = []
        for output in outputs:
            request_id = output.request_id
            seen = self._seen.get(request_id)
            if seen is None:
                continue
            tokens = output.generated_tokens[seen:]  # cumulative, also across a pause and resume
            logprobs = self._sampler.take_logprobs(request_id, len(tokens))
            queried = self._prompts.pop(request_id, 0)
            cached = self._hits.pop(request_id, 0)
            if output.status == RequestStatus.FAILED:
                rows.append(Row(request_id, tokens, RowState.FAILED, str(output.error), logprobs))
                del self._seen[request_id]
                continue
            state = RowState.FINISHED if output.is_finished() else RowState.RUNNING
            rows.append(Row(request_id, tokens, state, "", logprobs, queried, cached))
            if state is RowState.FINISHED:
                del self._seen[request_id]
            else:
                self._seen[request_id] += len(tokens)
        if rows:
            self._emit(rows)
