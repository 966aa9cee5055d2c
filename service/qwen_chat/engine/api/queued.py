"""What every engine shares: admission, queue positions, cancellation and the event stream.

At most MAX_RUNNING requests decode at once; up to MAX_WAITING more wait in line, taking turns by user
(`fair_queue.py`); beyond that a request is refused with `EngineOverloaded`. One user may have at most
MAX_USER_REQUESTS running or waiting (`UserAtCapacity` past it), so one key cannot fill every slot and the
whole line. Everything here runs on the event loop; subclasses say how the model loads (`_load`), how a
job runs (`_run`) and how a running one stops (`_cancel_running`), and post its events back onto the
loop (`streams.py`).
"""

from __future__ import annotations

import abc
import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from qwen_chat import metrics
from qwen_chat.engine.api.fair_queue import FairQueue
from qwen_chat.engine.api.interface import (
    EngineError,
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    EngineStats,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Queued,
    StateListener,
    TextDelta,
    UserAtCapacity,
)
from qwen_chat.engine.core.kv_cache import running_slots
from qwen_chat.engine.model.generation_config import sampling_defaults
from qwen_chat.engine.model.prompts import Prompts
from qwen_chat.engine.wire import ModelFacts
from qwen_chat.sampling_params import SamplingDefaults
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    events: asyncio.Queue[GenerationEvent | BaseException]
    accepted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False

    def finished_event(
        self, reason: FinishReason, completion_tokens: int, cached_tokens: int = 0
    ) -> Finished:
        prompt_tokens = len(self.request.prompt_ids)
        if self.started_at is None:  # never left the queue
            return Finished(reason, prompt_tokens, completion_tokens, 0.0, 0.0)
        return Finished(
            reason,
            prompt_tokens,
            completion_tokens,
            queue_seconds=self.started_at - self.accepted_at,
            generation_seconds=time.monotonic() - self.started_at,
            cached_tokens=cached_tokens,
        )


def user_request_cap(settings: Settings, max_running: int) -> int:
    """MAX_USER_REQUESTS, or half the decoding slots when it is 0: whatever one key sends, the other half
    stays free for everyone else."""
    return settings.max_user_requests or max(1, max_running // 2)


class QueuedEngine(abc.ABC):
    name = "engine"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # Until the core reports its own (`ModelFacts.max_running`), what it will most likely be: asking torch
        # whether `auto` means CUDA would import it into a worker that needs only the tokenizer.
        self.max_running = running_slots(settings, "cuda" if settings.device == "cuda" else "cpu")
        self.max_per_user = user_request_cap(settings, self.max_running)
        self._state = EngineState.LOADING
        self._stats = EngineStats()
        self._facts: ModelFacts | None = None
        self._listeners: list[StateListener] = []
        self._prompts: Prompts | None = None
        self._sampling: SamplingDefaults | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: dict[str, Job] = {}
        self._waiting: FairQueue[Job] = FairQueue()
        self._running = 0
        self._per_user: Counter[str] = Counter()  # requests running or waiting, by user

    # --- what subclasses provide ---

    @abc.abstractmethod
    async def _load(self) -> tuple[ModelFacts, Any]:
        """Load the model and warm it up; returns what the model is and its tokenizer."""

    @abc.abstractmethod
    def _run(self, job: Job) -> None:
        """Start decoding `job` (on the loop; must not block). Call `_slot_free` when it no longer decodes."""

    @abc.abstractmethod
    def _cancel_running(self, job: Job) -> None:
        """Stop a decoding job within one decode step; it must still end with a Finished event."""

    @abc.abstractmethod
    async def _shut_down(self) -> None:
        """After every job was aborted: stop decoding and give the model's memory back."""

    # --- the Engine interface ---

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def stats(self) -> EngineStats:
        self._stats.running = self._running
        self._stats.waiting = len(self._waiting)
        return self._stats

    @property
    def prompts(self) -> Prompts:
        if self._prompts is None:
            raise EngineNotReady()
        return self._prompts

    @property
    def sampling_defaults(self) -> SamplingDefaults:  # the checkpoint's known once the model loaded
        return self._sampling or SamplingDefaults.merge(self._settings)

    def watch(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """Load the model and tokenizer, then warm up."""
        self._loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            facts, tokenizer = await self._load()
            self._facts = facts
            if facts.max_running:  # the core's own count, which the estimate above only foresaw
                self.max_running = facts.max_running
                self.max_per_user = user_request_cap(self._settings, self.max_running)
            self._prompts = Prompts(tokenizer, facts.max_input_tokens, facts.family, facts.context_length)
            self._sampling = await asyncio.to_thread(sampling_defaults, self._settings)
        except Exception:
            self._state = EngineState.FAILED
            raise
        self._stats.load_seconds = time.monotonic() - started
        self._state = EngineState.READY
        metrics.publish_facts(self._settings.model_name, facts)
        log.info(
            "model_ready",
            model=self._settings.model,
            engine=self.name,
            device=facts.device,
            dtype=facts.dtype,
            load_seconds=round(self._stats.load_seconds, 2),
            max_input_tokens=facts.max_input_tokens,
        )

    async def close(self) -> None:
        self._state = EngineState.CLOSED
        for job in list(self._jobs.values()):
            self.abort(job.request.request_id)
        await self._shut_down()

    def abort(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is None or job.finished:
            return
        job.cancelled.set()
        if job in self._waiting:
            self._waiting.remove(job.request.user, job)
            self._update_gauges()
            self._finish(job, job.finished_event("cancelled", 0))
        elif job.started_at is not None:
            self._cancel_running(job)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if self._state is not EngineState.READY:
            raise EngineNotReady()
        if request.request_id in self._jobs:
            raise EngineError(f"request id {request.request_id!r} is already running")
        user = request.user
        self.check_user_cap(user)
        free = self._running < self.max_running
        if not free and len(self._waiting) >= self._settings.max_waiting:
            raise EngineOverloaded()
        job = Job(request, asyncio.Queue())
        self._jobs[request.request_id] = job
        if user is not None:
            self._per_user[user] += 1
        try:
            if free:
                position = 0
                self._launch(job)
            else:
                position = self._waiting.append(user, job)
                self._update_gauges()
            yield Queued(position)
            held: GenerationEvent | BaseException | None = None
            while True:
                event = held if held is not None else await job.events.get()
                held = None
                if isinstance(event, TextDelta):
                    # Deltas that piled up while the consumer was busy leave as one: when the event loop
                    # falls behind, it sends fewer, larger frames instead of falling further behind.
                    while held is None and not job.events.empty():
                        following = job.events.get_nowait()
                        if isinstance(following, TextDelta):
                            event = TextDelta(
                                event.text + following.text,
                                following.completion_tokens,
                                event.logprobs + following.logprobs,
                            )
                        else:
                            held = following
                if isinstance(event, BaseException):
                    raise EngineError("generation failed") from event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if not job.finished:
                self.abort(request.request_id)
            self._jobs.pop(request.request_id, None)
            if user is not None:
                self._per_user[user] -= 1
                if not self._per_user[user]:
                    del self._per_user[user]

    def check_user_cap(self, user: str | None) -> None:
        if user is not None and self._per_user[user] >= self.max_per_user:
            raise UserAtCapacity(self.max_per_user)

    # --- for subclasses ---

    @property
    def facts(self) -> ModelFacts:
        assert self._facts is not None, "the model is not loaded"
        return self._facts

    def stop_ids(self, request: GenerationRequest) -> frozenset[int]:
        if request.sampling.ignore_eos:  # the reply runs to its token limit
            return frozenset()
        own = request.stop_token_ids
        return own if own is not None else frozenset(self.facts.stop_token_ids)

    def max_new_tokens(self, request: GenerationRequest) -> int:
        """The request's limit, within what the model's context leaves after the prompt."""
        return min(request.sampling.max_new_tokens, self.facts.context_length - len(request.prompt_ids))

    def _set_state(self, state: EngineState, reason: str = "") -> None:
        """After the first start: the engine stopped, restarts or failed for good; listeners hear of it."""
        self._state = state
        for listener in self._listeners:
            listener(state, reason)

    def finish_reason(self, job: Job, generated: list[int]) -> FinishReason:
        if job.cancelled.is_set():
            return "cancelled"
        return "stop" if generated and generated[-1] in self.stop_ids(job.request) else "length"

    def _finish(self, job: Job, event: Finished | BaseException) -> None:
        """On the loop: the job's last event."""
        if job.finished:
            return
        job.finished = True
        job.events.put_nowait(event)

    def _slot_free(self) -> None:
        """On the loop: a decoding slot is free; the next waiting job takes it."""
        self._running -= 1
        while self._waiting and self._running < self.max_running:
            self._launch(self._waiting.popleft())
        self._update_gauges()

    def _launch(self, job: Job) -> None:
        self._running += 1
        job.started_at = time.monotonic()
        self._update_gauges()
        self._run(job)

    def _update_gauges(self) -> None:
        model = self._settings.model_name
        metrics.REQUESTS_RUNNING.labels(model).set(self._running)
        metrics.REQUESTS_WAITING.labels(model).set(len(self._waiting))
