"""The batching manager's output router, replaced by the batch core's (`batch.py`)."""

from __future__ import annotations

from typing import Any

from qwen_chat.engine.core.batch_sampler import BatchSampler
from qwen_chat.engine.hf_internals import OutputRouter, RequestStatus
from qwen_chat.engine.wire import Row, RowState


class StepRouter(OutputRouter):
    """The manager's output router, replaced: each step's outputs become one call of `emit` with the new
    token ids of every request still tracked. Cancelled requests are untracked at once, so a token from
    the step in flight is dropped here."""

    def __init__(self, emit: Any, sampler: BatchSampler) -> None:
        super().__init__()
        self._emit = emit
        self._sampler = sampler
        self._seen: dict[str, int] = {}  # request id -> generated tokens already emitted

    def track(self, request_id: str) -> None:
        self._seen[request_id] = 0

    def untrack(self, request_id: str) -> None:
        self._seen.pop(request_id, None)

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
            if output.status == RequestStatus.FAILED:
                rows.append(Row(request_id, tokens, RowState.FAILED, str(output.error), logprobs))
                del self._seen[request_id]
            elif output.is_finished():
                rows.append(Row(request_id, tokens, RowState.FINISHED, logprobs=logprobs))
                del self._seen[request_id]
            else:
                rows.append(Row(request_id, tokens, logprobs=logprobs))
                self._seen[request_id] += len(tokens)
        if rows:
            self._emit(rows)
