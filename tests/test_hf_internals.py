"""The names of transformers' internals the batch engine hooks (`engine/hf_internals/`) exist, with the
signatures the hooks rely on, in the installed transformers: an upgrade that renames one fails here and at
the engine's start with the hook's name, never silently (preemption counting and the CPU attention path
would otherwise just stop working)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from qwen_chat.engine import hf_internals
from qwen_chat.engine.core import make_core
from qwen_chat.engine.model.loader import load_model, unload
from qwen_chat.settings import Settings


def test_every_hooked_name_imports_and_the_wrapped_methods_keep_their_parameters() -> None:
    for name in hf_internals._NAMES:
        assert getattr(hf_internals, name) is not None, name
    manager_type = hf_internals.ContinuousBatchingManager
    for method, parameters in hf_internals.WRAPPED_METHODS.items():
        found = list(inspect.signature(getattr(manager_type, method)).parameters)
        assert found[: len(parameters)] == parameters, (method, found)
    assert "register" in dir(hf_internals.AttentionInterface)
    assert set(hf_internals.bytes_to_unicode()) == set(range(256))


def test_a_started_manager_has_every_hook(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    loaded = load_model(settings)
    steps: list[Any] = []
    core: Any = make_core(settings, loaded, steps.append)
    try:
        core.start()  # hooks, starts and warms up the manager; raises if a hook is missing
        manager = core._manager
        assert hf_internals.check_manager(manager, started=True) == []
        assert hf_internals.cache_pages(manager) > 0 and hf_internals.max_batch_tokens(manager) > 0
        assert 0 <= hf_internals.held_share(manager) <= 1
        assert hf_internals.manager_alive(manager)
        # The attention the model runs, as this transformers names it (on CPU, SDPA: our per-request one).
        assert hf_internals.attention(loaded.model) == "sdpa"
        assert core.facts().attention == "sdpa" and core.facts().fast_paths == []
    finally:
        core.stop()
        unload(loaded)


def test_a_missing_hook_is_named() -> None:
    class Renamed:  # a manager whose transformers renamed everything we touch
        def _generation_step(self, batch: Any) -> None: ...

    missing = hf_internals.check_manager(Renamed(), started=True)
    assert "ContinuousBatchingManager._generation_step()" in missing
    assert "ContinuousBatchingManager._generation_loop_body(batch_processor, bootstrapping)" in missing
    assert "manager.output_router" in missing and "manager.batch_processor.cache.num_blocks" in missing
    started_only = {m for m in missing if m.startswith("manager.batch_processor")}
    assert started_only and not started_only & set(hf_internals.check_manager(Renamed(), started=False))
    allocator = SimpleNamespace(block_table={})  # `bytes_per_block` renamed
    cache = SimpleNamespace(cache_allocators={"full": allocator})
    found = hf_internals.check_manager(SimpleNamespace(batch_processor=SimpleNamespace(cache=cache)), True)
    assert "manager.batch_processor.cache.cache_allocators[*].bytes_per_block" in found


def test_a_renamed_override_or_request_field_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """What our subclasses override, and the fields they read of the manager's requests, are checked too:
    the manager would call a renamed method on the base class and never ours."""
    assert hf_internals._missing_overrides() == []
    overrides = {"OutputRouter": {"deliver_many": ["self", "outputs"]}}
    monkeypatch.setattr(hf_internals, "OVERRIDDEN_METHODS", overrides)
    monkeypatch.setattr(hf_internals, "REQUEST_FIELDS", {"RequestState": ["generated_ids"]})
    assert hf_internals._missing_overrides() == [
        "OutputRouter.deliver_many(outputs)",
        "RequestState.generated_ids",
    ]


def test_the_async_pipeline_the_loop_turn_drives_has_what_it_uses() -> None:
    """What `hf_internals/turns.py` uses of transformers' async batching, which CPU never builds: the IO
    pairs, their swap and host side, the request list an update reads, and the loop body's contract (a
    bootstrapping turn launches without taking in; the loop takes in one more pair when it ends)."""
    from transformers.generation.continuous_batching import continuous_api, input_outputs

    asynchronous = input_outputs.ContinuousBatchingAsyncIOs
    assert hasattr(asynchronous, "swap_io_pairs") and hasattr(asynchronous, "prepare_batch_update")
    init = inspect.getsource(asynchronous.__init__)
    assert "self.io_pairs" in init and "self.compute_stream" in init
    assert "self.current_pair" in inspect.getsource(asynchronous.swap_io_pairs)
    assert "self.host_io" in inspect.getsource(input_outputs.HostDeviceIOPair.__init__)
    assert "return self.requests_in_batch" in inspect.getsource(
        input_outputs.ContinuousBatchingIOs.prepare_batch_update
    )
    body = inspect.getsource(continuous_api.ContinuousBatchingManager._generation_loop_body)
    assert "if bootstrapping:" in body and "self.current_batch += 1" in body
    runner = inspect.getsource(continuous_api.ContinuousBatchProcessor.__init__) + inspect.getsource(
        continuous_api.ContinuousBatchingManager._run_generation_loop
    )
    assert "self.model_runner" in runner and "batch_processor.update_batch()" in runner
