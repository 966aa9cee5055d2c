"""Continuous batching on transformers' own manager: every running request shares each forward pass.

One long-lived `ContinuousBatchingManager` per worker, sized from settings (never the default that sizes
the KV cache to a share of free RAM). Requests enter it only when a MAX_RUNNING slot is free (admission,
queue positions and overload are `QueuedEngine`'s); each streams its tokens back onto the event loop
through the manager's result handlers. Per-request sampling (temperature, top_p, repetition penalty,
seed) is done by `PerRequestSampler` inside the manager's own logits step, so greedy and sampled
requests share a batch and a seed reproduces the same reply whatever else is running. See
docs/engines.md for the design and its trade-offs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch
from transformers import ContinuousBatchingConfig, GenerationConfig
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)
from transformers.generation.continuous_batching.requests import RequestStatus

from qwen_chat.detokenizer import IncrementalDetokenizer
from qwen_chat.engine import EngineError, Finished, GenerationRequest, SamplingParams, TextDelta
from qwen_chat.queued_engine import Job, QueuedEngine
from qwen_chat.settings import Settings
from qwen_chat.simple_engine import pad_token_id

log = structlog.get_logger(__name__)

# transformers gives the manager's logger a plain-text handler of its own (and stops propagation) when the
# module is first imported; send its lines through the service's JSON logging instead.
_manager_logger = logging.getLogger("ContinuousBatchingLogger")
_manager_logger.handlers.clear()
_manager_logger.propagate = True

# How long a cancelled request's result handler stays to swallow a late token from the step in flight.
_LATE_OUTPUT_SECONDS = 5.0


@dataclass(frozen=True)
class _Sampling:
    temperature: float
    top_p: float
    repetition_penalty: float
    generator: torch.Generator | None


class PerRequestSampler(ContinuousBatchingLogitsProcessor):
    """Applies each row's own repetition penalty, temperature and top-p, and draws its token from the
    request's own seeded generator; greedy rows keep their scores (the manager itself takes the argmax).

    It runs on the manager's thread: `prepare_tensor_args` receives the requests whose logits rows the
    following `__call__` gets, in row order (the manager's synchronous mode, its default on CPU).
    """

    def __init__(self) -> None:
        # Parameters are looked up by request id, not passed to add_request.
        self.supported_kwargs: dict[str, type] = {}
        self.ignored_kwargs: tuple[str, ...] = ()
        self._params: dict[str, _Sampling] = {}
        self._rows: list[Any] = []

    def register(self, request_id: str, params: SamplingParams, device: torch.device) -> None:
        generator = None
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            generator = torch.Generator(device=device).manual_seed(seed)
        self._params[request_id] = _Sampling(
            params.temperature, params.top_p, params.repetition_penalty, generator
        )

    def forget(self, request_id: str) -> None:
        self._params.pop(request_id, None)

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        self._rows = [future.state for future in requests_with_new_token]
        return torch.zeros(len(self._rows), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        greedy = _Sampling(0.0, 1.0, 1.0, None)
        out = scores
        for row, state in enumerate(self._rows[: scores.shape[0]]):
            params = self._params.get(state.request_id, greedy)
            if params.repetition_penalty == 1.0 and params.generator is None:
                continue
            if out is scores:
                out = scores.clone()
            out[row] = _sample_row(scores[row], state, params)
        return out


def _sample_row(row: torch.Tensor, state: Any, params: _Sampling) -> torch.Tensor:
    """The same arithmetic as transformers' RepetitionPenalty/Temperature/TopP processors in `generate`."""
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(
            state.initial_tokens + state.generated_tokens, dtype=torch.long, device=row.device
        )
        penalised = row.gather(0, seen)
        penalised = torch.where(
            penalised < 0, penalised * params.repetition_penalty, penalised / params.repetition_penalty
        )
        row = row.scatter(0, seen, penalised)
    if params.generator is None:
        return row
    warped = row / params.temperature
    if params.top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(warped, descending=False)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative <= (1 - params.top_p)
        remove[-1:] = False  # keep at least the most likely token
        warped = warped.masked_fill(remove.scatter(0, sorted_index, remove), float("-inf"))
    chosen = torch.multinomial(warped.float().softmax(-1), 1, generator=params.generator)
    return torch.full_like(row, float("-inf")).scatter_(0, chosen, 0.0)


@dataclass(eq=False)
class _Stream:
    """One running request's view of the manager's cumulative outputs."""

    job: Job
    detokenizer: IncrementalDetokenizer
    seen: int = 0
    done: bool = False
    generated: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CacheGeometry:
    num_blocks: int
    page_size: int
    max_batch_tokens: int

    @property
    def tokens(self) -> int:
        return self.num_blocks * self.page_size


def cache_geometry(
    settings: Settings, context_length: int, budget: int, device: torch.device
) -> CacheGeometry:
    """Pages, page size and batch tokens for `ContinuousBatchingConfig`, from settings.

    The cache holds at least one request of the longest admitted size (prompt budget plus MAX_NEW_TOKENS):
    a request larger than the whole cache would stop the manager. By default it holds MAX_RUNNING such
    requests, capped at KV_CACHE_TOKENS when that is set; requests that outgrow a full cache are paused
    and resumed by the manager, never lost.
    """
    page_size = settings.kv_page_size or (256 if device.type == "cuda" else 32)
    longest = min(context_length, budget + settings.max_new_tokens)
    wanted = settings.kv_cache_tokens or settings.max_running * longest
    tokens = max(longest, wanted)
    # The manager holds back new prefills when less than 15% of the cache is free: leave that headroom.
    num_blocks = math.ceil(tokens * 1.2 / page_size) + 1
    max_batch_tokens = settings.max_batch_tokens or (2048 if device.type == "cuda" else 512)
    return CacheGeometry(num_blocks, page_size, max_batch_tokens)


class ContinuousBatchEngine(QueuedEngine):
    name = "batch"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._manager: Any = None
        self._sampler = PerRequestSampler()
        self._streams: dict[str, _Stream] = {}
        self._geometry: CacheGeometry | None = None

    # --- lifecycle ---

    async def _prepare(self) -> None:
        loaded = self.loaded
        self._geometry = cache_geometry(
            self._settings, loaded.context_length, self.prompts.max_input_tokens, loaded.device
        )
        await asyncio.to_thread(self._start_manager)
        log.info(
            "batch_engine_ready",
            kv_cache_tokens=self._geometry.tokens,
            page_size=self._geometry.page_size,
            max_batch_tokens=self._geometry.max_batch_tokens,
            max_running=self._settings.max_running,
        )

    def _start_manager(self) -> None:
        loaded = self.loaded
        stop_ids = loaded.stop_token_ids
        generation = GenerationConfig(
            do_sample=False,  # PerRequestSampler picks sampled tokens; the manager takes the argmax
            max_new_tokens=self._settings.max_new_tokens,
            eos_token_id=sorted(stop_ids),
            pad_token_id=pad_token_id(loaded.tokenizer, stop_ids),
        )
        geometry = self._geometry
        assert geometry is not None
        config = ContinuousBatchingConfig(
            num_blocks=geometry.num_blocks,
            page_size=geometry.page_size,
            max_batch_tokens=geometry.max_batch_tokens,
            max_requests_per_batch=self._settings.max_running,
            max_queue_size=0,
        )
        manager = loaded.model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=config
        )
        processors = manager.logit_processor
        processors.logits_processor.append(self._sampler)
        processors.tensors_required += 1
        processors.do_processing = True
        manager.start()
        self._manager = manager

    async def _warm_up(self) -> None:
        ids = self.prompts.encode_chat([{"role": "user", "content": "hi"}])
        params = SamplingParams(max_new_tokens=1, temperature=0.0, top_p=1.0, repetition_penalty=1.0)
        job = Job(GenerationRequest("warm-up", ids, params), asyncio.Queue())
        self._running += 1  # _slot_free() gives it back when the warm-up finishes
        job.started_at = time.monotonic()
        self._run(job)
        while True:
            event = await asyncio.wait_for(job.events.get(), timeout=300)
            if isinstance(event, BaseException):
                raise EngineError("warm-up failed") from event
            if isinstance(event, Finished):
                return

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
        self._sampler.register(request_id, request.sampling, self.loaded.device)
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
        self._sampler.forget(request_id)
        if self._loop is not None and self._manager is not None:
            # The handler removes itself after a final output; after a cancel there is none.
            self._loop.call_later(_LATE_OUTPUT_SECONDS, self._drop_handler, self._manager, request_id)
        self._finish(stream.job, event)
        self._slot_free()

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
