"""What every engine core is, whether it runs as a thread of the worker (`api/in_thread.py`) or in a child
process of its own (`child.py`).

A core takes `Submit`s and `Cancel`s (from any thread) and hands each decode step's rows to its sink as one
`Step` (from its own threads). It holds no queue, no text and no client: admission, detokenization and
transports are the API side's (`api/streams.py`). `BatchCore` (batch.py) and `SimpleCore` (simple.py) are the
two; `make_core` (this package's `__init__`) picks one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from qwen_chat.engine.hf_internals import attention
from qwen_chat.engine.model.loader import LoadedModel, input_budget
from qwen_chat.engine.model.prompts import Prompts
from qwen_chat.engine.model.tokenizer import class_path
from qwen_chat.engine.wire import ModelFacts, Row, RowState, Step, Submit
from qwen_chat.sampling_params import SamplingParams
from qwen_chat.settings import Settings

StepSink = Callable[[Step], None]

# The request every core runs before it reports ready: one greedy token, under an id no client can send
# (transports make ids of printable text).
WARM_UP_ID = "\x00warm-up"
_WARM_UP_SECONDS = 300.0


class EngineCore(Protocol):
    name: str

    def start(self) -> None:
        """Blocking: prepare the decoder and warm it up; raises when it cannot run."""

    def submit(self, request: Submit) -> None: ...

    def cancel(self, request_id: str) -> None:
        """Stop a request within one decode step; nothing more is sent for it."""

    def stop(self) -> None:
        """Blocking: stop decoding (nothing is running any more)."""

    def healthy(self) -> bool:
        """False once the decoding loop died by itself."""

    def facts(self) -> ModelFacts: ...


def model_facts(
    settings: Settings,
    loaded: LoadedModel,
    max_running: int,
    pages: int = 0,
    page_size: int = 0,
    fast: list[str] | None = None,
) -> ModelFacts:
    """What the worker is told of the loaded model; `fast`: the fast paths the core runs (`fast_paths.py`)."""
    return ModelFacts(
        context_length=loaded.context_length,
        stop_token_ids=sorted(loaded.stop_token_ids),
        max_input_tokens=input_budget(settings, loaded.context_length),
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        kv_cache_pages=pages,
        kv_page_size=page_size,
        family=loaded.family,
        max_running=max_running,
        tokenizer_class=class_path(loaded.tokenizer),
        attention=attention(loaded.model),
        fast_paths=fast or [],
    )


def grammar_eos(loaded: LoadedModel) -> int:
    """The token a grammar lets end a constrained reply: the end of turn (`<|im_end|>`) where it stops one."""
    end_of_turn = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_of_turn, int) and end_of_turn in loaded.stop_token_ids:
        return end_of_turn
    return min(loaded.stop_token_ids)


class WarmingSink:
    """The core's sink while it warms up: the warm-up's own rows stop here, every other row passes."""

    def __init__(self, sink: StepSink) -> None:
        self._sink = sink
        self._warm: threading.Event | None = None
        self._error = ""

    def __call__(self, step: Step) -> None:
        if self._warm is not None:
            step.rows = [row for row in step.rows if not self._held(row)]
            if not step.rows:
                return
        self._sink(step)

    def _held(self, row: Row) -> bool:
        if row.request_id != WARM_UP_ID:
            return False
        if row.state is not RowState.RUNNING and self._warm is not None:
            self._error = row.error
            self._warm.set()
        return True

    def warm_up(self, core: EngineCore, loaded: LoadedModel, settings: Settings) -> None:
        """Run one short generation through `core`, so that the first user does not pay for lazy setup."""
        prompts = Prompts(loaded.tokenizer, input_budget(settings, loaded.context_length), loaded.family)
        ids = prompts.encode_chat([{"role": "user", "content": "hi"}])
        self._warm = warm = threading.Event()
        greedy = SamplingParams(max_new_tokens=1, temperature=0.0, top_p=1.0, repetition_penalty=1.0)
        core.submit(Submit(WARM_UP_ID, ids, greedy, sorted(loaded.stop_token_ids)))
        finished = warm.wait(_WARM_UP_SECONDS)
        self._warm = None
        if not finished:
            raise RuntimeError(f"the warm-up generation did not finish in {_WARM_UP_SECONDS:.0f} s")
        if self._error:
            raise RuntimeError(f"the warm-up generation failed: {self._error}")
