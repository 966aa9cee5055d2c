"""The hybrid core: continuous batching of our own for Qwen3.5/3.6 and Qwen3-Next (Gated DeltaNet layers with
full attention among them), which transformers' batching manager refuses; transformers' own model classes run
on a cache of ours (`hybrid_cache.py`). docs/engines.md has the design. Each turn of the loop takes the
requests and cancels that came in; decodes one token for every running request in one forward, sampled by
`BatchSampler`; then prefills up to MAX_BATCH_TOKENS of prompts, one prompt at a time, admitting the oldest
waiting request when a row and its cache are free (resuming from a kept conversation state, `kept_states.py`,
where its prompt extends one). Every token of a turn leaves in one `Step`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any

import structlog
import torch

from qwen_chat.engine import hf_internals
from qwen_chat.engine.core import hybrid_cache
from qwen_chat.engine.core.base import WARM_UP_ID, StepSink, WarmingSink, grammar_eos, model_facts
from qwen_chat.engine.core.batch_sampler import BatchSampler
from qwen_chat.engine.core.grammar import GrammarError, Grammars
from qwen_chat.engine.core.hybrid_cache import HybridCache, RequestKV
from qwen_chat.engine.core.hybrid_requests import Request, SamplerRow, cache_tokens, cache_usage
from qwen_chat.engine.core.kept_states import KeptStates, generation_marker
from qwen_chat.engine.core.kv_cache import batch_tokens, running_slots
from qwen_chat.engine.model.loader import LoadedModel, input_budget
from qwen_chat.engine.wire import ModelFacts, Row, RowState, Step, Submit
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)

_CACHE_USAGE_SECONDS = 0.5
_STOP = object()


class HybridCore:
    name = "batch"

    def __init__(self, settings: Settings, loaded: LoadedModel, sink: StepSink) -> None:
        self._settings = settings
        self._loaded = loaded
        self._sink = WarmingSink(sink)
        device = loaded.device
        self.max_running = running_slots(settings, device.type)
        self._layout = hybrid_cache.layout_of(loaded.model.config, loaded.dtype)
        self._chunk = batch_tokens(settings, device.type)
        self._longest = min(
            loaded.context_length, input_budget(settings, loaded.context_length) + settings.max_new_tokens
        )
        self._budget_tokens = cache_tokens(settings, device, self._layout, self.max_running, self._longest)
        vocab_size = loaded.model.get_output_embeddings().out_features
        self._sampler = BatchSampler(self.max_running, vocab_size, device)
        self._grammars = Grammars(loaded.tokenizer, vocab_size, grammar_eos(loaded), loaded.family)
        self._cache = HybridCache(self._layout, self.max_running, device)
        self._kept = KeptStates(self._layout, generation_marker(loaded.tokenizer))
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._prefilling: Request | None = None
        self._decoding: list[Request] = []  # row i of the cache's pool is request i
        self._reserved = 0  # tokens held by admitted requests
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cache_measured = 0.0

    # --- lifecycle ---

    def start(self) -> None:
        missing = hf_internals.check_hybrid(self._loaded.model)
        if missing:
            raise RuntimeError(
                f"this transformers lacks what the hybrid engine relies on: {', '.join(missing)}"
            )
        hybrid_cache.install(self._loaded.model)
        self._thread = threading.Thread(target=self._loop, name="hybrid-engine", daemon=True)
        self._thread.start()
        self._sink.warm_up(self, self._loaded, self._settings)
        self._grammars.warm_in_background()
        layout = self._layout
        facts = {"kv_bytes_per_token": layout.token_bytes, "state_bytes_per_request": layout.state_bytes}
        log.info(
            "hybrid_engine_ready", cache_tokens=self._budget_tokens, max_running=self.max_running, **facts
        )

    def facts(self) -> ModelFacts:
        # Not paged: one "page" is one token of the full-attention layers' cache.
        return model_facts(self._settings, self._loaded, self.max_running, self._budget_tokens, 1)

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stopping = True
        self._commands.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout=30)

    # --- requests (any thread) ---

    def submit(self, request: Submit) -> None:
        # The grammar is compiled here, on the caller's thread, not in the loop that decodes everyone.
        try:
            matcher = self._grammars.for_request(request.response_format)
        except GrammarError as exc:
            self._sink(Step([Row(request.request_id, [], RowState.FAILED, f"response_format: {exc}")]))
            return
        self._commands.put(Request.of(request, self._loaded.context_length, matcher))

    def cancel(self, request_id: str) -> None:
        self._commands.put(request_id)

    # --- the loop's thread ---

    def _loop(self) -> None:
        while not self._stopping:
            rows: list[Row] = []
            seconds = 0.0
            try:
                if not self._take_commands(block=not (self._waiting or self._prefilling or self._decoding)):
                    return
                started = time.perf_counter()
                with torch.inference_mode():
                    if self._decoding:
                        self._step(self._decode, rows)
                    seconds = time.perf_counter() - started
                    self._step(self._prefill, rows)
            except Exception as exc:  # outside a forward (a cancel's row move): fail what is held, go on
                self._fail(exc, [*self._decoding, self._prefilling], rows)
            if rows:
                self._emit(rows, seconds)

    def _take_commands(self, block: bool) -> bool:
        """Apply what came in; False once told to stop."""
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            if command is _STOP:
                return False
            if isinstance(command, Request):
                self._waiting.append(command)
            else:
                self._drop(command)

    def _drop(self, request_id: str) -> None:
        """A cancel: the request leaves wherever it is, and nothing more is sent for it."""
        for request in self._waiting:
            if request.request_id == request_id:
                self._waiting.remove(request)
                return
        if self._prefilling is not None and self._prefilling.request_id == request_id:
            self._release(self._prefilling)
            self._prefilling = None
            return
        for row, request in enumerate(self._decoding):
            if request.request_id == request_id:
                self._leave(row)
                return

    def _step(self, work: Any, rows: list[Row]) -> None:
        """Run one part of a turn; a failure fails the requests it held, and the loop goes on."""
        try:
            work(rows)
        except Exception as exc:
            self._fail(exc, list(self._decoding) if work == self._decode else [self._prefilling], rows)

    def _fail(self, exc: Exception, held: list[Request | None], rows: list[Row]) -> None:
        log.exception("hybrid_step_failed")
        for request in held:
            if request is not None:
                rows.append(Row(request.request_id, [], RowState.FAILED, f"{type(exc).__name__}: {exc}"))
                self._drop(request.request_id)

    def _decode(self, rows: list[Row]) -> None:
        requests = self._decoding
        self._cache.decoding([request.kv for request in requests])  # type: ignore[misc]
        device = self._loaded.device
        ids = torch.tensor([[r.tokens.generated_tokens[-1]] for r in requests], device=device)
        positions = torch.tensor([[r.kv.length] for r in requests], device=device)  # type: ignore[union-attr]
        tokens = self._sample(requests, self._cache.forward(self._loaded.model, ids, positions))
        ended = [row for row, request in enumerate(requests) if self._advance(request, tokens[row], rows)]
        for row in reversed(ended):
            self._leave(row)

    def _prefill(self, rows: list[Row]) -> None:
        budget = self._chunk
        while budget > 0:
            request = self._prefilling or self._admit()
            if request is None:
                return
            budget -= self._prefill_chunk(request, budget, rows)

    def _prefill_chunk(self, request: Request, budget: int, rows: list[Row]) -> int:
        prompt = request.tokens.initial_tokens
        start = request.prefilled
        end = min(len(prompt), start + budget)
        if start < request.keep_at < end:
            end = request.keep_at  # a chunk ends where the state is kept
        kv = request.kv
        assert kv is not None
        self._cache.prefilling(kv)
        device = self._loaded.device
        ids = torch.tensor([prompt[start:end]], device=device)
        positions = torch.arange(start, end, device=device)[None]
        logits = self._cache.forward(self._loaded.model, ids, positions)
        request.prefilled = end
        if end == request.keep_at:
            self._keep(prompt[:end], kv)
        if end < len(prompt):
            return end - start
        token = self._sample([request], logits)[0]
        if self._advance(request, token, rows):
            self._release(request)
        else:
            self._cache.move(self._cache.staging, len(self._decoding))
            self._decoding.append(request)
        self._prefilling = None  # only now: until here a failure is this request's
        return end - start

    def _keep(self, tokens: list[int], kv: RequestKV) -> None:
        """Keep the staging row's state for a later turn; a failure (out of memory) only costs the reuse."""
        room = self._budget_tokens - self._reserved
        try:
            self._kept.keep(tokens, self._cache.save(self._cache.staging), kv, room)
        except Exception:
            log.exception("conversation_state_not_kept")

    def _admit(self) -> Request | None:
        """The oldest waiting request, into the staging row, if a decoding row and its cache are free."""
        if not self._waiting or len(self._decoding) >= self.max_running:
            return None
        request = self._waiting[0]
        prompt = request.tokens.initial_tokens
        kept = self._kept.find(prompt)  # found first: the state it resumes from is the last one dropped
        room = self._budget_tokens - self._reserved - self._kept.tokens
        if request.reserved > room + self._kept.tokens:
            return None  # running requests hold the room: kept states stay until they can make it
        if request.reserved > room:
            self._kept.free(request.reserved - room)
        self._waiting.popleft()
        self._reserved += request.reserved
        self._prefilling = request  # from here on, a failure is this request's
        submit = request.submit
        self._sampler.admit(submit, request.matcher)
        kv = request.kv = RequestKV(self._layout, request.reserved, self._loaded.device)
        if kept is not None and self._kept.resume(kept, kv):
            self._cache.restore(self._cache.staging, kept.states)
            request.prefilled = request.reused = kv.length
        if request.request_id != WARM_UP_ID:  # the warm-up leaves nothing behind
            request.keep_at = self._kept.keep_point(prompt, request.prefilled)
        return request

    def _sample(self, requests: list[Request], logits: torch.Tensor) -> list[int]:
        self._sampler.prepare_tensor_args([SamplerRow(request.tokens) for request in requests])
        scores = self._sampler(logits.float(), None)
        chosen: list[int] = scores.argmax(-1).tolist()
        return chosen

    def _advance(self, request: Request, token: int, rows: list[Row]) -> bool:
        """Add the request's new token to the step; True when it ended the request."""
        generated = request.tokens.generated_tokens
        generated.append(token)
        submit = request.submit
        logprobs = self._sampler.take_logprobs(request.request_id, 1)
        ended = token in submit.stop_token_ids or len(generated) >= submit.max_new_tokens
        state = RowState.FINISHED if ended else RowState.RUNNING
        first = (len(request.tokens.initial_tokens), request.reused) if len(generated) == 1 else (0, 0)
        rows.append(Row(request.request_id, [token], state, "", logprobs, *first))
        return ended

    def _leave(self, row: int) -> None:
        """Decoding row `row` ends: the last row takes its place."""
        last = len(self._decoding) - 1
        request = self._decoding[row]
        self._cache.move(last, row)
        self._decoding[row] = self._decoding[last]
        self._decoding.pop()
        self._release(request)

    def _release(self, request: Request) -> None:
        self._sampler.forget(request.request_id)
        self._reserved -= request.reserved
        request.kv = None

    def _emit(self, rows: list[Row], seconds: float) -> None:
        now = time.monotonic()
        usage = -1.0
        if (
            any(row.state is not RowState.RUNNING for row in rows)
            or now - self._cache_measured > _CACHE_USAGE_SECONDS
        ):
            admitted = len(self._decoding) + (self._prefilling is not None)
            usage = cache_usage(self._layout, self._reserved, admitted, self._budget_tokens, self.max_running)
            self._cache_measured = now
        self._sink(Step(rows, seconds, 0, usage, kept_states=len(self._kept)))
