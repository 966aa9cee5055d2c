"""The batch core: continuous batching on transformers' own manager, every running request in each forward.

One long-lived `ContinuousBatchingManager`, its KV cache sized from memory (`kv_cache.py`). Per-request
sampling (temperature, top_p, repetition penalty, seed) is done by `BatchSampler` inside the manager's own
logits step, for all rows at once, so greedy and sampled requests share a batch and a seed reproduces the
same reply whatever else is running. The manager hands each step's outputs to `StepRouter`
(`step_router.py`) in one call; it turns them into one `Step` of new token ids for the core's sink. See
docs/engines.md for the trade-offs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import structlog
from transformers import ContinuousBatchingConfig

from qwen_chat.engine import hf_internals
from qwen_chat.engine.block_events import BlockEvents, socket_address
from qwen_chat.engine.core import cpu_attention, fast_paths
from qwen_chat.engine.core.base import StepSink, WarmingSink, grammar_eos, model_facts
from qwen_chat.engine.core.batch_sampler import BatchSampler
from qwen_chat.engine.core.grammar import GrammarError, Grammars
from qwen_chat.engine.core.kv_cache import cache_geometry, running_slots
from qwen_chat.engine.core.step_router import StepRouter
from qwen_chat.engine.model.loader import LoadedModel, decoding_config, input_budget
from qwen_chat.engine.wire import ModelFacts, Row, RowState, Step, Submit
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)

# transformers gives the manager's logger a plain-text handler of its own (and stops propagation) when the
# module is first imported; send its lines through the service's JSON logging instead.
_manager_logger = logging.getLogger("ContinuousBatchingLogger")
_manager_logger.handlers.clear()
_manager_logger.propagate = True

# How often a step carries the KV cache usage (also whenever a request ends).
_CACHE_USAGE_SECONDS = 0.5


class BatchCore:
    name = "batch"

    def __init__(self, settings: Settings, loaded: LoadedModel, sink: StepSink) -> None:
        self._settings = settings
        self._loaded = loaded
        self._sink = WarmingSink(sink)
        self.max_running = running_slots(settings, loaded.device.type)
        budget = input_budget(settings, loaded.context_length)
        self._geometry = cache_geometry(settings, loaded.context_length, budget, loaded.device.type)
        vocab_size = loaded.model.get_output_embeddings().out_features
        # The manager schedules at most max_batch_tokens rows a step (its max_requests_per_batch).
        rows = min(self.max_running, self._geometry.max_batch_tokens)
        self._sampler = BatchSampler(self.max_running, vocab_size, loaded.device, rows=rows)
        self._sampler.tables.stream = lambda: hf_internals.compute_stream(self._manager)
        self._adding: deque[Submit] = deque()  # submitted, added to the manager at its next turn
        self._adding_lock = threading.Lock()
        self._grammars = Grammars(loaded.tokenizer, vocab_size, grammar_eos(loaded), loaded.family)
        self._router = StepRouter(self._emit, self._sampler)
        self._manager: Any = None
        self._step_seconds = 0.0
        self._preempted = 0
        self._cache_measured = 0.0
        self._cancels = 0  # cancels sent to the manager (written by `cancel` only)
        self._cancels_measured = 0  # of those, how many the cache was measured after (the loop's only)
        self._fast: list[str] = []  # the manager's fast paths, once started (`fast_paths.py`)
        self._blocks = _block_events(settings)  # the pod's KV-cache events, when it publishes them

    # --- lifecycle ---

    def start(self) -> None:
        if self._loaded.device.type == "cpu":
            cpu_attention.install()
        self._start_manager()
        self._sink.warm_up(self, self._loaded, self._settings)
        self._grammars.warm_in_background()
        _require_hooks(self._manager, started=True)
        self._check_cache_holds_a_request(hf_internals.cache_pages(self._manager))
        self._fast = fast_paths.running(self._manager)
        attention = hf_internals.attention(self._loaded.model)
        fast_paths.warn_if_slow(self._loaded.device.type, attention)
        log.info(
            "batch_engine_ready",
            kv_cache_pages=hf_internals.cache_pages(self._manager),
            page_size=self._geometry.page_size,
            pages_per_request=self._geometry.pages_per_request,
            max_batch_tokens=hf_internals.max_batch_tokens(self._manager),
            max_running=self.max_running,
            attention=attention,
            fast_paths=self._fast,
        )

    def facts(self) -> ModelFacts:
        pages, page_size = hf_internals.cache_pages(self._manager), self._geometry.page_size
        return model_facts(self._settings, self._loaded, self.max_running, pages, page_size, self._fast)

    def healthy(self) -> bool:
        return self._manager_alive()

    def stop(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.stop(block=True, timeout=30, hard_stop=True)
        if self._blocks is not None:
            self._blocks.close()

    def _start_manager(self) -> None:
        loaded = self._loaded
        # BatchSampler picks sampled tokens; the manager takes the argmax.
        generation = decoding_config(loaded, self._settings.max_new_tokens)
        geometry = self._geometry
        config = ContinuousBatchingConfig(
            num_blocks=geometry.num_blocks,
            max_memory_percent=geometry.memory_fraction,
            page_size=geometry.page_size,
            max_batch_tokens=geometry.max_batch_tokens,
            max_blocks_per_request=geometry.pages_per_request,
            max_requests_per_batch=self.max_running,
            max_queue_size=0,
            use_cuda_graph={"auto": None, "on": True, "off": False}[self._settings.cuda_graphs],
            # transformers' default: on with graphs, where the step needs no attention mask
            use_async_batching=False if self._settings.cuda_graphs == "off" else None,
        )
        manager = loaded.model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=config
        )
        _require_hooks(manager, started=False)
        hf_internals.hook_manager(
            manager,
            self._router,
            self._timed,
            self._measured_after_cancel,
            self._sampler,
            lambda: self._turn(manager),
        )
        manager.start()
        self._manager = manager

    def _timed(self, step: Any) -> Any:
        def timed_step() -> None:
            started = time.perf_counter()
            step()
            self._step_seconds = time.perf_counter() - started

        return timed_step

    def _measured_after_cancel(self, body: Any) -> Any:
        """The manager frees a cancelled request's pages in its next loop turn and delivers nothing for it:
        measure the cache after that turn, or an idle pod would keep showing the pages of its last cancelled
        reply (and the endpoint picker route around it)."""

        def loop_body(batch_processor: Any, bootstrapping: bool) -> bool:
            cancels = self._cancels  # read before the turn, which then takes those cancels
            more = bool(body(batch_processor, bootstrapping))
            if cancels != self._cancels_measured:
                self._cancels_measured = cancels
                self._sink(Step([], cache_usage=self._cache_usage()))
            return more

        return loop_body

    def _check_cache_holds_a_request(self, num_blocks: int) -> None:
        """A cache sized from device memory must still hold one request of the longest admitted size: the
        manager fails every running request when one cannot be scheduled at all."""
        geometry = self._geometry
        tokens = num_blocks * geometry.page_size
        if tokens < geometry.longest_request:
            raise RuntimeError(
                f"the KV cache holds {tokens} tokens, less than one request of the longest admitted size "
                f"({geometry.longest_request}: MAX_INPUT_TOKENS plus MAX_NEW_TOKENS); lower those, or raise "
                "KV_CACHE_MEMORY_FRACTION or KV_CACHE_TOKENS"
            )

    # --- requests (any thread) ---

    def submit(self, request: Submit) -> None:
        if not self._manager_alive():
            self._restart_manager()
        request_id = request.request_id
        try:
            matcher = self._grammars.for_request(request.response_format)
        except GrammarError as exc:
            self._emit([Row(request_id, [], RowState.FAILED, f"response_format: {exc}")])
            return
        self._sampler.admit(request, matcher)
        # Before the request exists, so not even its first token is missed.
        self._router.track(request_id, len(request.prompt_ids))
        with self._adding_lock:
            self._adding.append(request)
        hf_internals.wake(self._manager)

    def cancel(self, request_id: str) -> None:
        # The manager frees the request's cache pages at its next step.
        self._router.untrack(request_id)
        self._sampler.forget(request_id)
        with self._adding_lock:
            waiting = [request for request in self._adding if request.request_id != request_id]
            added = len(waiting) == len(self._adding)
            self._adding = deque(waiting)
        if self._manager is not None and added:
            self._manager.cancel_request(request_id)
            self._cancels += 1

    # --- the manager's thread ---

    def _turn(self, manager: Any) -> bool:
        """At each loop turn of `manager` (on its thread, before it schedules): follow what it does (once
        per batch processor: preemptions, prefix-cache hits), add what was submitted since the last turn,
        then say whether this turn's step must run synchronously (a request whose logits need the host:
        `BatchSampler.needs_sync`). Adding requests here, not on the submitting thread, means none joins a
        step that was not told so."""
        hf_internals.count_preemptions(manager, self._requeued)
        hf_internals.follow_prefix_hits(manager, self._router.prefix_hit)
        if self._blocks is not None:
            unfollowed = hf_internals.follow_blocks(manager, self._blocks)
            if unfollowed:
                log.warning("kv_events_not_published", reason=unfollowed)
        with self._adding_lock:
            adding, self._adding = self._adding, deque()
        for request in adding:
            request_id = request.request_id
            accepted = manager.add_request(
                request.prompt_ids,
                request_id=request_id,
                max_new_tokens=request.max_new_tokens,
                streaming=True,
                eos_token_id=request.stop_token_ids,
            )
            if accepted is None:
                self._router.untrack(request_id)
                self._sampler.forget(request_id)
                self._emit([Row(request_id, [], RowState.FAILED, "the batching manager refused the request")])
        return self._sampler.needs_sync

    def _emit(self, rows: list[Row]) -> None:
        ended = False
        for row in rows:
            if row.state is not RowState.RUNNING:
                self._sampler.forget(row.request_id)
                ended = True
        now = time.monotonic()
        usage = -1.0
        if ended or now - self._cache_measured > _CACHE_USAGE_SECONDS:
            usage = self._cache_usage()
            self._cache_measured = now
        preempted, self._preempted = self._preempted, 0  # counted since the last step (`_turn`)
        self._sink(Step(rows, self._step_seconds, preempted, usage))

    def _cache_usage(self) -> float:
        return hf_internals.held_share(self._manager)

    def _requeued(self, requests: int) -> None:
        self._preempted += requests

    def _manager_alive(self) -> bool:
        return hf_internals.manager_alive(self._manager)

    def _restart_manager(self) -> None:
        """The manager's thread died (it fails every request it held): start a fresh one."""
        log.error("batch_manager_restarted", reason="the continuous batching thread stopped")
        old = self._manager
        if old is not None:
            old.stop(block=False, hard_stop=True)
        self._start_manager()


def _block_events(settings: Settings) -> BlockEvents | None:
    if not settings.kv_events_endpoint or settings.state_dir is None:
        return None
    return BlockEvents(socket_address(settings.state_dir))


def _require_hooks(manager: Any, started: bool) -> None:
    """A transformers that renamed what we hook fails here, at start, naming it (`hf_internals/`)."""
    missing = hf_internals.check_manager(manager, started)
    if missing:
        raise RuntimeError(f"this transformers lacks what the batch engine hooks: {', '.join(missing)}")
