"""The simple core: each request's own `model.generate` in a thread, up to MAX_RUNNING at once.

Selected with QWEN_CHAT_ENGINE=simple. Each new token leaves as a one-row `Step`; a stopping criterion that
reads the request's cancel flag ends a generation within one decode step. Simple and robust, but requests
do not share forward passes (see batch.py).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
import torch
from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from qwen_chat.engine.core.base import StepSink, WarmingSink, grammar_eos, model_facts
from qwen_chat.engine.core.generate_processors import GrammarMask, LogprobRecorder
from qwen_chat.engine.core.grammar import Grammars
from qwen_chat.engine.core.kv_cache import running_slots
from qwen_chat.engine.core.sampling import logits_processors
from qwen_chat.engine.model.loader import LoadedModel, decoding_config
from qwen_chat.engine.wire import ModelFacts, Row, RowState, Step, Submit
from qwen_chat.settings import Settings

log = structlog.get_logger(__name__)


class _Cancelled(StoppingCriteria):
    def __init__(self, flag: threading.Event) -> None:
        self._flag = flag

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = self._flag.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class _Streamer(BaseStreamer):
    """Receives each new token from `generate` (in the worker thread) and sends it on as a one-row step."""

    def __init__(self, request_id: str, sink: StepSink, recorder: LogprobRecorder | None) -> None:
        self._request_id = request_id
        self._sink = sink
        self._recorder = recorder
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        tokens = value.flatten().tolist()
        entries = [self._recorder.take(token) for token in tokens] if self._recorder is not None else []
        logprobs = [entry for entry in entries if entry is not None]
        self._sink(Step([Row(self._request_id, tokens, logprobs=logprobs)]))

    def end(self) -> None:
        pass


class SimpleCore:
    name = "simple"

    def __init__(self, settings: Settings, loaded: LoadedModel, sink: StepSink) -> None:
        self._settings = settings
        self._loaded = loaded
        self._sink = WarmingSink(sink)
        self._slots = running_slots(settings, "cpu")
        self._executor = ThreadPoolExecutor(self._slots, thread_name_prefix="generate")
        self._cancelled: dict[str, threading.Event] = {}
        self._vocab_size = loaded.model.get_output_embeddings().out_features
        self._grammars = Grammars(loaded.tokenizer, self._vocab_size, grammar_eos(loaded), loaded.family)

    def start(self) -> None:
        self._sink.warm_up(self, self._loaded, self._settings)
        self._grammars.warm_in_background()

    def facts(self) -> ModelFacts:
        return model_facts(self._settings, self._loaded, self._slots)

    def healthy(self) -> bool:
        return True

    def stop(self) -> None:
        for flag in list(self._cancelled.values()):
            flag.set()
        self._executor.shutdown(wait=True)

    def submit(self, request: Submit) -> None:
        flag = self._cancelled[request.request_id] = threading.Event()
        self._executor.submit(self._run, request, flag)

    def cancel(self, request_id: str) -> None:
        flag = self._cancelled.get(request_id)
        if flag is not None:
            flag.set()

    def _run(self, request: Submit, cancelled: threading.Event) -> None:
        """Worker thread: one request's whole generation."""
        request_id = request.request_id
        try:
            if not cancelled.is_set():
                self._generate(request, cancelled)
        except Exception as exc:
            log.exception("generation_failed", request_id=request_id)
            self._sink(Step([Row(request_id, [], RowState.FAILED, f"{type(exc).__name__}: {exc}")]))
        else:
            self._sink(Step([Row(request_id, [], RowState.FINISHED)]))
        finally:
            self._cancelled.pop(request_id, None)

    def _generate(self, request: Submit, cancelled: threading.Event) -> None:
        loaded = self._loaded
        prompt_len = len(request.prompt_ids)
        stop_ids = frozenset(request.stop_token_ids)
        config = decoding_config(loaded, request.max_new_tokens, stop_ids)
        # transformers' own MinNewTokensLengthLogitsProcessor masks the stop tokens, ahead of our processors.
        config.min_new_tokens = request.sampling.min_tokens or None
        matcher = self._grammars.for_request(request.response_format)
        recorder = LogprobRecorder(request.top_logprobs) if request.top_logprobs >= 0 else None
        extra: list[LogitsProcessor] = []
        if matcher is not None:
            extra.append(GrammarMask(matcher, prompt_len, self._vocab_size))
        if recorder is not None:
            extra.append(recorder)
        with torch.inference_mode():
            loaded.model.generate(
                input_ids=torch.tensor([request.prompt_ids], device=loaded.device),
                attention_mask=torch.ones((1, prompt_len), dtype=torch.long, device=loaded.device),
                generation_config=config,
                logits_processor=logits_processors(request.sampling, prompt_len, tuple(extra)),
                stopping_criteria=StoppingCriteriaList([_Cancelled(cancelled)]),
                streamer=_Streamer(request.request_id, self._sink, recorder),
            )
