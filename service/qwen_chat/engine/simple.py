"""An engine that runs each request's own `model.generate` in a thread: up to MAX_RUNNING at once.

Selected with QWEN_CHAT_ENGINE=simple. Threads post their results onto the event loop with
`call_soon_threadsafe`; a stopping criterion that reads the request's cancel flag ends a generation within
one decode step. Simple and robust, but requests do not share forward passes (see batch.py).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from qwen_chat.engine.detokenizer import IncrementalDetokenizer
from qwen_chat.engine.interface import Finished, GenerationEvent, GenerationRequest, TextDelta
from qwen_chat.engine.model_loader import pad_token_id
from qwen_chat.engine.queued import WARM_UP, Job, QueuedEngine
from qwen_chat.engine.sampling import logits_processors
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)


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


class SimpleEngine(QueuedEngine):
    name = "simple"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._executor = ThreadPoolExecutor(self.max_running, thread_name_prefix="generate")

    def _run(self, job: Job) -> None:
        assert self._loop is not None
        future = self._loop.run_in_executor(self._executor, self._run_in_thread, job)
        future.add_done_callback(lambda _: self._slot_free())

    def _cancel_running(self, job: Job) -> None:
        """The stopping criterion sees the flag at the next step; the thread then posts Finished."""

    async def _warm_up(self) -> None:
        ids = self.prompts.encode_chat([{"role": "user", "content": "hi"}])
        job = Job(GenerationRequest("warm-up", ids, WARM_UP), asyncio.Queue())
        await asyncio.to_thread(self._generate, job)

    async def _shut_down(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def _post(self, job: Job, event: GenerationEvent | BaseException) -> None:
        """From the worker thread: hand an event to the loop."""
        assert self._loop is not None
        if isinstance(event, Finished | BaseException):
            self._loop.call_soon_threadsafe(self._finish, job, event)
        else:
            self._loop.call_soon_threadsafe(job.events.put_nowait, event)

    def _run_in_thread(self, job: Job) -> None:
        """Worker thread: one request's whole generation."""
        try:
            event = self._generate(job)
        except Exception as exc:
            log.exception("generation_failed", request_id=job.request.request_id)
            self._post(job, exc)
        else:
            self._post(job, event)

    def _generate(self, job: Job) -> Finished:
        loaded = self.loaded
        request = job.request
        prompt_len = len(request.prompt_ids)
        stop_ids = self.stop_ids(request)
        max_new = self.max_new_tokens(request)
        if job.cancelled.is_set() or max_new <= 0:
            return job.finished_event("cancelled" if job.cancelled.is_set() else "length", 0)
        streamer = _Streamer(IncrementalDetokenizer(loaded.tokenizer), lambda e: self._post(job, e))
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=sorted(stop_ids),
            pad_token_id=pad_token_id(loaded.tokenizer, stop_ids),
        )
        with torch.inference_mode():
            loaded.model.generate(
                input_ids=torch.tensor([request.prompt_ids], device=loaded.device),
                attention_mask=torch.ones((1, prompt_len), dtype=torch.long, device=loaded.device),
                generation_config=config,
                logits_processor=logits_processors(request.sampling),
                stopping_criteria=StoppingCriteriaList([_Cancelled(job.cancelled)]),
                streamer=streamer,
            )
        generated = streamer.token_ids
        return job.finished_event(self.finish_reason(job, generated), len(generated))
