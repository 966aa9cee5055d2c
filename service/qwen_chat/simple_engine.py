"""An engine that runs each request's own `model.generate` in a thread: up to MAX_RUNNING at once.

Threads post their results onto the event loop with `call_soon_threadsafe`; a stopping criterion that
reads the request's cancel flag ends a generation within one decode step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from qwen_chat import metrics
from qwen_chat.detokenizer import IncrementalDetokenizer
from qwen_chat.engine import (
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
    SamplingParams,
    TextDelta,
)
from qwen_chat.model_loader import LoadedModel, default_max_input_tokens, load_model, unload
from qwen_chat.prompts import Prompts
from qwen_chat.sampling import logits_processors
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class _Job:
    request: GenerationRequest
    events: asyncio.Queue[GenerationEvent | BaseException]
    accepted_at: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False


class _Cancelled(StoppingCriteria):
    def __init__(self, flag: threading.Event) -> None:
        self._flag = flag

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = self._flag.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class _Streamer(BaseStreamer):
    """Receives each new token from `generate` (in the worker thread) and posts text deltas to the loop."""

    def __init__(self, detokenizer: IncrementalDetokenizer, post: Any) -> None:
        self._detokenizer = detokenizer
        self._post = post
        self._prompt_seen = False
        self.token_ids: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        ids = value.flatten().tolist()
        self.token_ids.extend(ids)
        delta = self._detokenizer.push(ids)
        if delta:
            self._post(TextDelta(delta, len(self.token_ids)))

    def end(self) -> None:
        delta = self._detokenizer.flush()
        if delta:
            self._post(TextDelta(delta, len(self.token_ids)))


class SimpleEngine:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._state = EngineState.LOADING
        self._stats = EngineStats()
        self._loaded: LoadedModel | None = None
        self._prompts: Prompts | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(settings.max_running, thread_name_prefix="generate")
        self._jobs: dict[str, _Job] = {}
        self._waiting: deque[_Job] = deque()
        self._running = 0

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

    async def start(self) -> None:
        """Load the model and tokenizer, then warm up with a one-token generation."""
        self._loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            self._loaded = await asyncio.to_thread(load_model, self._settings)
            budget = self._settings.max_input_tokens or default_max_input_tokens(
                self._loaded.context_length, self._settings.max_new_tokens
            )
            self._prompts = Prompts(self._loaded.tokenizer, budget)
            await asyncio.to_thread(self._warm_up)
        except Exception:
            self._state = EngineState.FAILED
            raise
        self._stats.load_seconds = time.monotonic() - started
        self._state = EngineState.READY
        assert self._loaded is not None
        log.info(
            "model_ready",
            model=self._settings.model,
            device=str(self._loaded.device),
            dtype=str(self._loaded.dtype).removeprefix("torch."),
            load_seconds=round(self._stats.load_seconds, 2),
            max_input_tokens=budget,
        )

    async def close(self) -> None:
        self._state = EngineState.CLOSED
        for job in list(self._jobs.values()):
            self.abort(job.request.request_id)
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        unload(self._loaded)
        self._loaded = None

    def abort(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is None:
            return
        job.cancelled.set()
        if job in self._waiting:
            self._waiting.remove(job)
            self._update_gauges()
            self._finish(job, Finished("cancelled", len(job.request.prompt_ids), 0, 0.0, 0.0))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if self._state is not EngineState.READY:
            raise EngineNotReady()
        if request.request_id in self._jobs:
            raise EngineError(f"request id {request.request_id!r} is already running")
        free = self._running < self._settings.max_running
        if not free and len(self._waiting) >= self._settings.max_waiting:
            raise EngineOverloaded()
        job = _Job(request, asyncio.Queue())
        self._jobs[request.request_id] = job
        if free:
            position = 0
            self._launch(job)
        else:
            self._waiting.append(job)
            position = len(self._waiting)
            self._update_gauges()
        try:
            yield Queued(position)
            while True:
                event = await job.events.get()
                if isinstance(event, BaseException):
                    raise EngineError("generation failed") from event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if not job.finished:
                self.abort(request.request_id)
            self._jobs.pop(request.request_id, None)

    def _launch(self, job: _Job) -> None:
        assert self._loop is not None
        self._running += 1
        self._update_gauges()
        future = self._loop.run_in_executor(self._executor, self._run, job)
        future.add_done_callback(lambda _: self._on_slot_free())

    def _on_slot_free(self) -> None:
        self._running -= 1
        while self._waiting and self._running < self._settings.max_running:
            self._launch(self._waiting.popleft())
        self._update_gauges()

    def _update_gauges(self) -> None:
        model = self._settings.model_name
        metrics.REQUESTS_RUNNING.labels(model).set(self._running)
        metrics.REQUESTS_WAITING.labels(model).set(len(self._waiting))

    def _finish(self, job: _Job, event: GenerationEvent | BaseException) -> None:
        job.finished = True
        job.events.put_nowait(event)

    def _post(self, job: _Job, event: GenerationEvent | BaseException) -> None:
        """From the worker thread: hand an event to the loop."""
        assert self._loop is not None
        if isinstance(event, Finished | BaseException):
            self._loop.call_soon_threadsafe(self._finish, job, event)
        else:
            self._loop.call_soon_threadsafe(job.events.put_nowait, event)

    def _run(self, job: _Job) -> None:
        """Worker thread: one request's whole generation."""
        started = time.monotonic()
        try:
            event = self._generate(job, started)
        except Exception as exc:
            log.exception("generation_failed", request_id=job.request.request_id)
            self._post(job, exc)
        else:
            self._post(job, event)

    def _generate(self, job: _Job, started: float) -> Finished:
        loaded = self._loaded
        assert loaded is not None
        request = job.request
        prompt_len = len(request.prompt_ids)
        stop_ids = request.stop_token_ids if request.stop_token_ids is not None else loaded.stop_token_ids
        max_new = min(request.sampling.max_new_tokens, loaded.context_length - prompt_len)
        if job.cancelled.is_set() or max_new <= 0:
            reason: FinishReason = "cancelled" if job.cancelled.is_set() else "length"
            return Finished(reason, prompt_len, 0, started - job.accepted_at, 0.0)
        streamer = _Streamer(IncrementalDetokenizer(loaded.tokenizer), lambda e: self._post(job, e))
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=sorted(stop_ids),
            pad_token_id=_pad_token_id(loaded.tokenizer, stop_ids),
        )
        with torch.inference_mode():
            loaded.model.generate(
                input_ids=torch.tensor([request.prompt_ids], device=loaded.device),
                attention_mask=torch.ones((1, prompt_len), dtype=torch.long, device=loaded.device),
                generation_config=config,
                logits_processor=logits_processors(request.sampling, loaded.device),
                stopping_criteria=StoppingCriteriaList([_Cancelled(job.cancelled)]),
                streamer=streamer,
            )
        generated = streamer.token_ids
        if job.cancelled.is_set():
            reason = "cancelled"
        elif generated and generated[-1] in stop_ids:
            reason = "stop"
        else:
            reason = "length"
        return Finished(
            reason, prompt_len, len(generated), started - job.accepted_at, time.monotonic() - started
        )

    def _warm_up(self) -> None:
        assert self._prompts is not None
        ids = self._prompts.encode_chat([{"role": "user", "content": "hi"}])
        params = SamplingParams(max_new_tokens=1, temperature=0.0, top_p=1.0, repetition_penalty=1.0)
        self._generate(_Job(GenerationRequest("warm-up", ids, params), asyncio.Queue()), time.monotonic())


def _pad_token_id(tokenizer: Any, stop_ids: frozenset[int]) -> int:
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else min(stop_ids)
