"""Continuous batching on transformers' own manager: every running request shares each forward pass.

One long-lived `ContinuousBatchingManager` per worker, its KV cache sized from memory (`kv_cache.py`).
Requests enter it only when a MAX_RUNNING slot is free (admission, queue positions and overload are
`QueuedEngine`'s); each streams its tokens back onto the event loop through the manager's result handlers.
Per-request sampling (temperature, top_p, repetition penalty, seed) is done by `BatchSampler` inside the
manager's own logits step, for all rows at once, so greedy and sampled requests share a batch and a seed
reproduces the same reply whatever else is running. See docs/engines.md for the design and its trade-offs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from transformers import ContinuousBatchingConfig, GenerationConfig
from transformers.generation.continuous_batching.requests import RequestStatus

from qwen_chat import metrics
from qwen_chat.engine import cpu_attention
from qwen_chat.engine.batch_sampler import BatchSampler
from qwen_chat.engine.detokenizer import IncrementalDetokenizer
from qwen_chat.engine.interface import EngineError, Finished, GenerationRequest, TextDelta
from qwen_chat.engine.kv_cache import CacheGeometry, cache_geometry
from qwen_chat.engine.model_loader import pad_token_id
from qwen_chat.engine.queued import WARM_UP, Job, QueuedEngine
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)

# transformers gives the manager's logger a plain-text handler of its own (and stops propagation) when the
# module is first imported; send its lines through the service's JSON logging instead.
_manager_logger = logging.getLogger("ContinuousBatchingLogger")
_manager_logger.handlers.clear()
_manager_logger.propagate = True

# How long a cancelled request's result handler stays to swallow a late token from the step in flight.
_LATE_OUTPUT_SECONDS = 5.0
# How often a running engine refreshes its KV cache usage gauge (also at each request's end).
_CACHE_GAUGE_SECONDS = 0.5


@dataclass(eq=False)
class _Stream:
    """One running request's view of the manager's cumulative outputs."""

    job: Job
    detokenizer: IncrementalDetokenizer
    seen: int = 0
    done: bool = False
    generated: list[int] = field(default_factory=list)


class ContinuousBatchEngine(QueuedEngine):
    name = "batch"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._manager: Any = None
        self._sampler: BatchSampler | None = None
        self._streams: dict[str, _Stream] = {}
        self._geometry: CacheGeometry | None = None
        self._cache_published = 0.0

    # --- lifecycle ---

    async def _prepare(self) -> None:
        loaded = self.loaded
        self._geometry = cache_geometry(
            self._settings, loaded.context_length, self.prompts.max_input_tokens, loaded.device.type
        )
        if loaded.device.type == "cpu":
            cpu_attention.install()
        vocab_size = loaded.model.get_output_embeddings().out_features
        self._sampler = BatchSampler(self.max_running, vocab_size, loaded.device)
        await asyncio.to_thread(self._start_manager)

    def _start_manager(self) -> None:
        loaded = self.loaded
        stop_ids = loaded.stop_token_ids
        generation = GenerationConfig(
            do_sample=False,  # BatchSampler picks sampled tokens; the manager takes the argmax
            max_new_tokens=self._settings.max_new_tokens,
            eos_token_id=sorted(stop_ids),
            pad_token_id=pad_token_id(loaded.tokenizer, stop_ids),
        )
        geometry = self._geometry
        assert geometry is not None
        config = ContinuousBatchingConfig(
            num_blocks=geometry.num_blocks,
            max_memory_percent=geometry.memory_fraction,
            page_size=geometry.page_size,
            max_batch_tokens=geometry.max_batch_tokens,
            max_requests_per_batch=self.max_running,
            max_queue_size=0,
            # BatchSampler builds each step's plan right before that step's logits (batch_sampler.py):
            # double buffering would build it a step early and a CUDA graph would replay a stale one.
            use_async_batching=False,
            use_cuda_graph=False,
        )
        manager = loaded.model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=config
        )
        processors = manager.logit_processor
        assert self._sampler is not None
        processors.logits_processor.append(self._sampler)
        processors.tensors_required += 1
        processors.do_processing = True
        manager.start()
        self._manager = manager

    async def _warm_up(self) -> None:
        ids = self.prompts.encode_chat([{"role": "user", "content": "hi"}])
        job = Job(GenerationRequest("warm-up", ids, WARM_UP), asyncio.Queue())
        self._running += 1  # _slot_free() gives it back when the warm-up finishes
        job.started_at = time.monotonic()
        self._run(job)
        while True:
            event = await asyncio.wait_for(job.events.get(), timeout=300)
            if isinstance(event, BaseException):
                raise EngineError("warm-up failed") from event
            if isinstance(event, Finished):
                break
        self._publish_cache()
        processor = self._manager.batch_processor
        self._check_cache_holds_a_request(processor.cache.num_blocks)
        assert self._geometry is not None
        log.info(
            "batch_engine_ready",
            kv_cache_pages=processor.cache.num_blocks,
            page_size=self._geometry.page_size,
            max_batch_tokens=processor.max_batch_tokens,
            max_running=self.max_running,
        )

    def _check_cache_holds_a_request(self, num_blocks: int) -> None:
        """A cache sized from device memory must still hold one request of the longest admitted size: the
        manager fails every running request when one cannot be scheduled at all."""
        geometry = self._geometry
        assert geometry is not None
        tokens = num_blocks * geometry.page_size
        if tokens < geometry.longest_request:
            raise EngineError(
                f"the KV cache holds {tokens} tokens, less than one request of the longest admitted size "
                f"({geometry.longest_request}: MAX_INPUT_TOKENS plus MAX_NEW_TOKENS); lower those, or raise "
                "KV_CACHE_MEMORY_FRACTION or KV_CACHE_TOKENS"
            )

    async def _shut_down(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            await asyncio.to_thread(manager.stop, block=True, timeout=30, hard_stop=True)

    # --- running jobs ---

    def _run(self, job: Job) -> None:
        request = job.request
        request_id = request.request_id
        max_new = self.max_new_tokens(request)
        if max_new <= 0:
            self._finish(job, job.finished_event("length", 0))
            self._slot_free()
            return
        if not self._manager_alive():
            self._restart_manager()
        stream = _Stream(job, IncrementalDetokenizer(self.loaded.tokenizer))
        self._streams[request_id] = stream
        assert self._sampler is not None
        self._sampler.register(request_id, request.sampling)
        # Registered before the request exists, so not even its first token can miss the handler.
        self._manager.register_result_handler(request_id, lambda output: self._on_output(stream, output))
        accepted = self._manager.add_request(
            list(request.prompt_ids),
            request_id=request_id,
            max_new_tokens=max_new,
            streaming=True,
            eos_token_id=sorted(self.stop_ids(request)),
        )
        if accepted is None:
            self._end(stream, EngineError("the batching manager refused the request"))

    def _cancel_running(self, job: Job) -> None:
        stream = self._streams.get(job.request.request_id)
        if stream is None or stream.done:
            return
        self._manager.cancel_request(job.request.request_id)
        # The manager frees the request's cache pages at its next step and sends nothing more for it
        # (perhaps one token from the step in flight, which the finished stream ignores).
        self._end(stream, job.finished_event("cancelled", len(stream.generated)))

    def _on_output(self, stream: _Stream, output: Any) -> None:
        """On the loop, for each step's output: cumulative `generated_tokens` and a status."""
        if stream.done:
            return
        new = list(output.generated_tokens[stream.seen :])
        stream.seen = len(output.generated_tokens)
        stream.generated.extend(new)
        if time.monotonic() - self._cache_published > _CACHE_GAUGE_SECONDS:
            self._publish_cache()
        if new:
            delta = stream.detokenizer.push(new)
            if delta:
                stream.job.events.put_nowait(TextDelta(delta, len(stream.generated)))
        if output.status == RequestStatus.FAILED:
            log.error("generation_failed", request_id=stream.job.request.request_id, error=str(output.error))
            self._end(stream, EngineError(str(output.error)))
        elif output.is_finished():
            tail = stream.detokenizer.flush()
            if tail:
                stream.job.events.put_nowait(TextDelta(tail, len(stream.generated)))
            reason = self.finish_reason(stream.job, stream.generated)
            self._end(stream, stream.job.finished_event(reason, len(stream.generated)))

    def _end(self, stream: _Stream, event: Any) -> None:
        stream.done = True
        request_id = stream.job.request.request_id
        self._streams.pop(request_id, None)
        if self._sampler is not None:
            self._sampler.forget(request_id)
        self._publish_cache()
        if self._loop is not None and self._manager is not None:
            # The handler removes itself after a final output; after a cancel there is none.
            self._loop.call_later(_LATE_OUTPUT_SECONDS, self._drop_handler, self._manager, request_id)
        self._finish(stream.job, event)
        self._slot_free()

    def _publish_cache(self) -> None:
        """The KV cache gauges: usage now, and the cache's size in pages of `page_size` tokens."""
        processor = getattr(self._manager, "batch_processor", None)
        if processor is None or self._geometry is None:
            return
        self._cache_published = time.monotonic()
        cache = processor.cache
        usage = min(1.0, max(0.0, 1.0 - cache.compute_free_capacity()))
        metrics.publish_kv_cache(self._settings.model_name, usage, cache.num_blocks, self._geometry.page_size)

    @staticmethod
    def _drop_handler(manager: Any, request_id: str) -> None:
        router = manager.output_router
        with router._lock:
            router.result_handlers.pop(request_id, None)

    def _manager_alive(self) -> bool:
        manager = self._manager
        return (
            manager is not None
            and manager.is_running()
            and manager.background_thread_status.fatal_error is None
        )

    def _restart_manager(self) -> None:
        """The manager's thread died (it fails every request it held): start a fresh one."""
        log.error("batch_manager_restarted", reason="the continuous batching thread stopped")
        old = self._manager
        if old is not None:
            old.stop(block=False, hard_stop=True)
        self._start_manager()
