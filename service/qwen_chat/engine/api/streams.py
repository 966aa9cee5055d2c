"""The API side of an engine: running jobs become `Submit`s for a core, and each `Step` the core sends back
becomes text deltas and finished events, detokenized here, on the event loop.

Where the core runs is the subclass's: a thread of this process (`in_thread.py`) or a child process
(`process.py`). Either way one step arrives as one call of `_on_step`, however many rows it holds.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import structlog

from qwen_chat import metrics
from qwen_chat.engine.api.detokenizer import IncrementalDetokenizer
from qwen_chat.engine.api.fair_queue import FairQueue
from qwen_chat.engine.api.interface import EngineError, TextDelta
from qwen_chat.engine.api.queued import Job, QueuedEngine
from qwen_chat.engine.wire import RowState, Step, Submit, TokenLogprob
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class _Stream:
    """One running request: its tokens so far and their text."""

    job: Job
    detokenizer: IncrementalDetokenizer
    stop_ids: frozenset[int]
    generated: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, TokenLogprob]] = field(default_factory=list)  # not yet handed out
    cached_tokens: int = 0  # prompt tokens the core found in its prefix cache (shared pages, a kept state)

    def delta(self, text: str) -> TextDelta:
        logprobs, self.logprobs = tuple(self.logprobs), []
        return TextDelta(text, len(self.generated), logprobs)


class StreamingEngine(QueuedEngine):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.name = settings.engine
        self._streams: dict[str, _Stream] = {}
        self._step_metrics = metrics.EngineStepMetrics(settings.model_name)

    # --- what subclasses provide ---

    @abc.abstractmethod
    def _submit(self, request: Submit) -> None:
        """Hand the request to the core; raises when the core cannot take it."""

    @abc.abstractmethod
    def _send_cancel(self, request_id: str) -> None: ...

    # --- running jobs ---

    def _run(self, job: Job) -> None:
        request = job.request
        max_new = self.max_new_tokens(request)
        if max_new <= 0:
            self._finish(job, job.finished_event("length", 0))
            self._slot_free()
            return
        stop_ids = self.stop_ids(request)
        stream = _Stream(job, IncrementalDetokenizer(self.prompts.tokenizer), stop_ids)
        self._streams[request.request_id] = stream
        try:
            self._submit(
                Submit(
                    request.request_id,
                    list(request.prompt_ids),
                    dataclasses.replace(request.sampling, max_new_tokens=max_new),
                    sorted(stop_ids),
                    request.constraint or "",
                    -1 if request.top_logprobs is None else request.top_logprobs,
                )
            )
        except Exception as exc:
            log.error("submit_failed", request_id=request.request_id, error=f"{type(exc).__name__}: {exc}")
            self._end(stream, EngineError("the engine could not take the request"))

    def _cancel_running(self, job: Job) -> None:
        stream = self._streams.get(job.request.request_id)
        if stream is None:
            return
        try:
            self._send_cancel(job.request.request_id)
        except Exception as exc:  # the core is gone: nothing runs there any more
            log.warning("cancel_not_sent", request_id=job.request.request_id, error=str(exc))
        self._end(stream, job.finished_event("cancelled", len(stream.generated)))

    def _on_step(self, step: Step) -> None:
        """On the loop: one decode step of the core, every row that got tokens or ended in it."""
        self._step_metrics.observe(step)
        for row in step.rows:
            stream = self._streams.get(row.request_id)
            if stream is None:  # cancelled meanwhile: a late token from the step in flight
                continue
            stream.cached_tokens += row.cached_tokens
            if row.token_ids:
                stream.generated.extend(row.token_ids)
                if row.logprobs:  # the end-of-turn token is not part of the reply's text
                    pairs = zip(row.token_ids, row.logprobs, strict=False)
                    stream.logprobs += [pair for pair in pairs if pair[0] not in stream.stop_ids]
                delta = stream.detokenizer.push(row.token_ids)
                if delta:
                    stream.job.events.put_nowait(stream.delta(delta))
            if row.state is RowState.FAILED:
                log.error("generation_failed", request_id=row.request_id, error=row.error)
                self._end(stream, EngineError(row.error))
            elif row.state is RowState.FINISHED:
                tail = stream.detokenizer.flush()
                if tail or stream.logprobs:
                    stream.job.events.put_nowait(stream.delta(tail))
                reason = self.finish_reason(stream.job, stream.generated)
                finished = stream.job.finished_event(reason, len(stream.generated), stream.cached_tokens)
                self._end(stream, finished)

    def _end(self, stream: _Stream, event: Any) -> None:
        self._streams.pop(stream.job.request.request_id, None)
        self._finish(stream.job, event)
        self._slot_free()

    def _fail_all(self, error: EngineError) -> None:
        """The core is gone: every job, running or waiting, ends with `error` at once."""
        waiting = list(self._waiting)
        self._waiting = FairQueue()
        for job in waiting:
            self._finish(job, error)
        for stream in list(self._streams.values()):
            self._end(stream, error)
        self._update_gauges()
