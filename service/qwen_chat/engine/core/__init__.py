"""The engine's core: the model on its device and the loop that decodes, in the engine process (`child.py`
is its `main`) or as a thread of the worker (`api/in_thread.py`). It takes `Submit`s and hands each step's
rows on as one `Step`; it holds no queue, no text and no client.

- `base.py`: what every core is (`EngineCore`), its facts, and the warm-up it runs before it reports ready
- `batch.py`: continuous batching on transformers' manager (the default); `kv_cache.py` sizes its slots and
  cache, `batch_sampler.py` samples every row of a step at once, `cpu_attention.py` attends per request on CPU
- `hybrid.py`: continuous batching of our own for the hybrid families (Qwen3.5/3.6, Qwen3-Next), which the
  manager refuses; `hybrid_cache.py` is the cache their layers run on, `kept_states.py` the conversation
  states kept between turns
- `simple.py`: one `model.generate` per request, in threads (QWEN_CHAT_ENGINE=simple), with
  `generate_processors.py`
- `sampling.py`: the seeded per-request draw both cores share; `logprobs.py`: a row's log-probabilities;
  `grammar.py`: structured outputs as llguidance grammars
- `child.py`: the engine process's `main` (`python -m qwen_chat.engine.core.child`)

Importing this package loads no torch; `make_core` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwen_chat.engine.core.base import EngineCore, StepSink
    from qwen_chat.engine.model.loader import LoadedModel
    from qwen_chat.settings import Settings


def make_core(settings: Settings, loaded: LoadedModel, sink: StepSink) -> EngineCore:
    """The core QWEN_CHAT_ENGINE names, on `loaded`, handing its steps to `sink`."""
    if settings.engine == "simple":
        from qwen_chat.engine.core.simple import SimpleCore

        _no_block_events(settings, "the simple engine keeps no prefix cache")
        return SimpleCore(settings, loaded, sink)
    from qwen_chat.engine.model.families import HYBRID

    if loaded.family in HYBRID:
        from qwen_chat.engine.core.hybrid import HybridCore

        _no_block_events(settings, _HYBRID_BLOCKS)
        return HybridCore(settings, loaded, sink)
    from qwen_chat.engine.core.batch import BatchCore

    return BatchCore(settings, loaded, sink)


# Why a hybrid's pod publishes no KV-cache events (docs/scale-out.md).
_HYBRID_BLOCKS = (
    "a hybrid model resumes a conversation only at the exact end of a kept state, never at a block boundary "
    "of its tokens: blocks announced to a router would promise hits the engine cannot give"
)


def _no_block_events(settings: Settings, reason: str) -> None:
    if settings.kv_events_endpoint:
        import structlog

        structlog.get_logger(__name__).warning("kv_events_not_published", reason=reason)
