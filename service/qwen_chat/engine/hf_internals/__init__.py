"""transformers' private and internal names: the only module that names them. Elsewhere the service uses
transformers' public API (`AutoTokenizer`, `from_pretrained`, `generate`, `init_continuous_batching`,
`ContinuousBatchingConfig`, `GenerationConfig`), and two subclasses of the classes below, whose overridden
methods and the request fields they read are listed here and checked like the rest.

What is hooked, and why:
- `continuous_api.OutputRouter`: subclassed (`deliver`, `deliver_batch` overridden) and set as
  `manager.output_router`: one `Step` per decode step, the tokens of cancelled requests dropped
  (`core/batch.py`); it reads each `requests.GenerationOutput`'s `request_id`, `generated_tokens`, `status`,
  `error` and `is_finished()`
- `ContinuousBatchingManager._generation_step` and `._generation_loop_body`: wrapped, to time each forward
  (`decode_step_seconds`), to measure the KV cache after a cancel frees its pages, and to run a step that
  needs the host (`core/batch_sampler.py`) synchronously: `manager.current_batch` (read),
  `batch_processor.model_runner.use_cuda_graph_varlen` / `_decode` (off for that step),
  `.use_async_batching`, `.update_batch()` and `.inputs_and_outputs.swap_io_pairs()` (the step in flight
  taken in first); `inputs_and_outputs.compute_stream`: the sampler writes its tables on it;
  `manager._wake_up_loop`: set, when a request waits for the next turn
- `manager.logit_processor` (`.logits_processor`, `.tensors_required`, `.do_processing`): our processor
  appended; `cb_logits_processors.ContinuousBatchingLogitsProcessor`: its type (`core/batch_sampler.py`:
  `fill_defaults`, `prepare_tensor_args` and `__call__` overridden; it reads each `FutureRequestState`'s
  `state`, that `RequestState`'s `request_id`, `initial_tokens`, `generated_tokens`): every row of a step
  sampled at once with its own parameters; `requests.RequestStatus`: compared, to find a failed request's rows
- `manager.batch_processor.cache` (`num_blocks`, `num_sectors`, `bytes_per_sector`,
  `cache_allocators[*].block_table` and `.bytes_per_block`) and `.max_batch_tokens`: read, for the cache's
  pages and the share live requests hold (the endpoint picker's `kv_cache_usage_perc`)
- `manager.batch_processor.offloading_manager.offload_requests` (wrapped) and `.scheduler.waiting_requests`
  (read): preemptions counted; `.cache.search_prefix_match` (wrapped): the prefix cache's hits
  (`followed.py`); `.cache.use_prefix_sharing` and, of its block-sharing allocator, `mark_complete_blocks`
  and its `ledger`'s `register_new_hash`, `release`, `evict_cached_blocks` and `reset` (wrapped), to follow
  the blocks it stores and removes for the pod's KV-cache events (`blocks.py`, `ALLOCATOR_PATHS`)
- `manager.is_running()`, `manager.background_thread_status.fatal_error`: read, so a dead manager thread is
  restarted; `model.config._attn_implementation`: read, to say which attention runs
- `AttentionInterface.register("sdpa", ...)` and `integrations.sdpa_attention.sdpa_attention_forward`:
  re-registered and called, for per-request attention on CPU (`core/cpu_attention.py`)
- the methods a hybrid model's layers call on their cache (`CACHE_PROTOCOL`, those of transformers' `Cache`):
  answered by the hybrid core's own cache object (`core/hybrid_cache.py`), passed as the forward's `cache`;
  `AttentionInterface.register` again, for its per-request attention
- `convert_slow_tokenizer.bytes_to_unicode`: Qwen v1's `qwen.tiktoken` read as a byte-level BPE

`check_manager` names every hook a started manager lacks, `check_hybrid` what the hybrid core relies on; each
core calls its check at start, so a transformers that renamed one fails there with the hook's name, never
later and silently (`tests/test_hf_internals.py` checks them against the installed transformers). Importing
this module loads neither torch nor transformers: each name is imported when it is first used."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from qwen_chat.engine.hf_internals import turns
from qwen_chat.engine.hf_internals.blocks import ALLOCATOR_PATHS
from qwen_chat.engine.hf_internals.blocks import follow_blocks as follow_blocks
from qwen_chat.engine.hf_internals.followed import count_preemptions as count_preemptions
from qwen_chat.engine.hf_internals.followed import follow_prefix_hits as follow_prefix_hits
from qwen_chat.engine.hf_internals.introspect import fields, has_path, takes

# Module-level names, imported on first use (`from qwen_chat.engine.hf_internals import OutputRouter`).
_NAMES = {
    "OutputRouter": "transformers.generation.continuous_batching.continuous_api",
    "ContinuousBatchingManager": "transformers.generation.continuous_batching.continuous_api",
    "RequestStatus": "transformers.generation.continuous_batching.requests",
    "ContinuousBatchingLogitsProcessor": "transformers.generation.continuous_batching.cb_logits_processors",
    "sdpa_attention_forward": "transformers.integrations.sdpa_attention",
    "AttentionInterface": "transformers",
    "bytes_to_unicode": "transformers.convert_slow_tokenizer",
    "GenerationOutput": "transformers.generation.continuous_batching.requests",
    "FutureRequestState": "transformers.generation.continuous_batching.requests",
    "RequestState": "transformers.generation.continuous_batching.requests",
}
# Methods of transformers' classes that ours override (the manager calls them), with their parameters.
OVERRIDDEN_METHODS = {
    "OutputRouter": {"deliver": ["self", "output"], "deliver_batch": ["self", "outputs"]},
    "ContinuousBatchingLogitsProcessor": {
        "fill_defaults": ["self", "int32_tensor"],
        "prepare_tensor_args": ["self", "requests_with_new_token"],
        "__call__": ["self", "scores", "tensor_arg"],
    },
}
# The fields our router and sampler read of the requests the manager hands them.
REQUEST_FIELDS = {
    "GenerationOutput": ["request_id", "generated_tokens", "status", "error", "is_finished"],
    "FutureRequestState": ["state"],
    "RequestState": ["request_id", "initial_tokens", "generated_tokens"],
}
# The manager's methods we wrap, with the parameters the wrappers pass on.
WRAPPED_METHODS = {
    "_generation_step": ["self"],
    "_generation_loop_body": ["self", "batch_processor", "bootstrapping"],
}
# What Gated DeltaNet and attention layers call on the cache they are handed (transformers' `Cache`), with the
# parameters the hybrid core's cache takes.
CACHE_PROTOCOL = {
    "get_seq_length": ["self", "layer_idx"],
    "is_recording_past": ["self", "layer_idx"],
    "increase_count": ["self", "layer_idx", "state_idx"],
    "get_recurrent_states_to_keep": ["self", "layer_idx"],
    "get_conv_state": ["self", "layer_idx", "state_idx"],
    "get_recurrent_state": ["self", "layer_idx", "state_idx"],
    "update_conv_state": ["self", "conv_states", "layer_idx", "state_idx"],
    "update_recurrent_state": ["self", "recurrent_states", "layer_idx", "state_idx"],
    "update": ["self", "key_states", "value_states", "layer_idx"],
}


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(name)


def hook_manager(
    manager: Any,
    router: Any,
    time_step: Callable[[Callable[[], None]], Callable[[], None]],
    after_loop_turn: Callable[[Callable[..., Any]], Callable[..., Any]],
    processor: Any,
    sync_turn: Callable[[], bool],
) -> None:
    """Before `manager.start()`: our output router, our logits processor, the step timed and each loop turn
    followed (the batch processor is built on the manager's thread from these). Each turn first asks
    `sync_turn` (which may add requests) whether its step needs the previous step's tokens on the host: such
    a step runs eagerly (no CUDA graph) and, under async batching, only once the step in flight is taken in,
    and is taken in before the turn ends."""
    processors = manager.logit_processor
    processors.logits_processor.append(processor)
    processors.tensors_required += 1
    processors.do_processing = True
    manager.output_router = router
    manager._generation_step = time_step(manager._generation_step)
    manager._generation_loop_body = turns.turn(
        manager, after_loop_turn(manager._generation_loop_body), sync_turn
    )


def batch_processor(manager: Any) -> Any | None:
    """The manager's batch processor, once its thread has built it."""
    return getattr(manager, "batch_processor", None)


def wake(manager: Any) -> None:
    """The manager's loop stops waiting for requests (it sleeps up to 0.1 s when it has none)."""
    manager._wake_up_loop.set()


def compute_stream(manager: Any) -> Any:
    """The stream the manager's steps run on (None on CPU, or before its thread built it)."""
    return getattr(getattr(batch_processor(manager), "inputs_and_outputs", None), "compute_stream", None)


def cache_pages(manager: Any) -> int:
    """The pages of the manager's KV cache (0 before its thread built it)."""
    processor = batch_processor(manager)
    return int(processor.cache.num_blocks) if processor is not None else 0


def max_batch_tokens(manager: Any) -> int:
    processor = batch_processor(manager)
    return int(processor.max_batch_tokens) if processor is not None else 0


def attention(model: Any) -> str:  # the manager may have switched it to a paged one
    return str(model.config._attn_implementation)


def held_share(manager: Any) -> float:
    """The share of the KV cache that live requests hold, 0 to 1, or -1 before there is a cache (read on the
    manager's thread). The manager keeps the full pages of a finished or cancelled request as a prefix cache
    it evicts when it needs the room; those count as free here, as in vLLM's `kv_cache_usage_perc`, or a pod
    would look full for good after its first busy hour."""
    processor = batch_processor(manager)
    if processor is None:
        return -1.0
    cache = processor.cache
    held = 0
    for allocator in cache.cache_allocators.values():
        tables = allocator.block_table.values()  # request id -> its pages; a shared page counts once
        held += len({page for pages in tables for page in pages}) * allocator.bytes_per_block
    total: int = cache.num_sectors * cache.bytes_per_sector
    return min(1.0, held / total)


def manager_alive(manager: Any) -> bool:
    return bool(
        manager is not None and manager.is_running() and manager.background_thread_status.fatal_error is None
    )


def register_attention(name: str, function: Callable[..., Any]) -> None:
    """Every model of this process then runs `function` as its `name` attention."""
    interface: Any = __getattr__("AttentionInterface")
    interface.register(name, function)


def check_hybrid(model: Any) -> list[str]:
    """What this transformers lacks of what the hybrid core relies on: `Cache`'s methods in `CACHE_PROTOCOL`
    (the layers call them) and the forward's `cache` argument; empty when all are there."""
    from transformers import Cache

    missing = [
        f"transformers.Cache.{method}({', '.join(parameters[1:])})"
        for method, parameters in CACHE_PROTOCOL.items()
        if not takes(getattr(Cache, method, None), parameters)
    ]
    if "cache" not in inspect.signature(model.forward).parameters:
        missing.append(f"{type(model).__name__}.forward(cache=...)")
    return missing


def check_manager(manager: Any, started: bool) -> list[str]:
    """What `manager` lacks of the hooks above, each named: empty when all are there. Before it is started
    (`started` False) its batch processor does not exist yet, so only the rest is checked."""
    missing = [f"transformers.{name}" for name in _missing_names()]
    missing += _missing_overrides()
    for method, parameters in WRAPPED_METHODS.items():
        if not takes(getattr(type(manager), method, None), parameters):
            missing.append(f"ContinuousBatchingManager.{method}({', '.join(parameters[1:])})")
    paths = [
        "output_router",
        "logit_processor.logits_processor",
        "logit_processor.tensors_required",
        "logit_processor.do_processing",
        "background_thread_status.fatal_error",
        "is_running",
        "_wake_up_loop",
    ]
    if started:
        paths += _STARTED_PATHS
    missing += [f"manager.{path}" for path in paths if not has_path(manager, path)]
    processor = batch_processor(manager)
    for allocator in getattr(getattr(processor, "cache", None), "cache_allocators", {}).values():
        for attribute in ("bytes_per_block", *ALLOCATOR_PATHS):
            if not has_path(allocator, attribute):
                missing.append(f"manager.batch_processor.cache.cache_allocators[*].{attribute}")
    return sorted(set(missing))


# What a started manager's batch processor must have.
_STARTED_PATHS = [
    "current_batch",
    "batch_processor.use_async_batching",
    "batch_processor.update_batch",
    "batch_processor.inputs_and_outputs.compute_stream",
    "batch_processor.model_runner.use_cuda_graph_varlen",
    "batch_processor.model_runner.use_cuda_graph_decode",
    "batch_processor.max_batch_tokens",
    "batch_processor.scheduler.waiting_requests",
    "batch_processor.offloading_manager.offload_requests",
    "batch_processor.cache.num_blocks",
    "batch_processor.cache.search_prefix_match",
    "batch_processor.cache.use_prefix_sharing",
    "batch_processor.cache.num_sectors",
    "batch_processor.cache.bytes_per_sector",
    "batch_processor.cache.cache_allocators",
]


def _missing_overrides() -> list[str]:
    """The overridden methods and the request fields above that this transformers lacks."""
    missing = []
    for owner, methods in OVERRIDDEN_METHODS.items():
        cls = _imported(owner)
        for method, parameters in methods.items():
            if cls is None or not takes(getattr(cls, method, None), parameters):
                missing.append(f"{owner}.{method}({', '.join(parameters[1:])})")
    for owner, names in REQUEST_FIELDS.items():
        known = fields(_imported(owner))
        missing += [f"{owner}.{name}" for name in names if name not in known]
    return missing


def _imported(name: str) -> Any:
    try:
        return getattr(importlib.import_module(_NAMES[name]), name)
    except (ImportError, AttributeError):
        return None


def _missing_names() -> list[str]:
    return [
        f"{module.removeprefix('transformers.')}.{name}"
        for name, module in _NAMES.items()
        if _imported(name) is None
    ]
