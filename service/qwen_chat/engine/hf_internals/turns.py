"""The manager's loop turn, wrapped (part of `hf_internals`: it names transformers' batching internals).

A step whose logits need the host to know the previous step's tokens first (a grammar's mask; see
`core/batch_sampler.py`) runs eagerly, without a CUDA graph; under async batching, where the next step is
prepared while the one before runs, the step in flight is taken in (waited for, its requests updated) before
such a step is prepared, and the step itself is taken in before the turn ends. When no request needs that,
the turns go back to transformers' own: async batching refills its pipeline with a step that takes nothing in
(the manager's `bootstrapping` turn), then each turn launches the next step and takes in the one before."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def turn(
    manager: Any, body: Callable[[Any, bool], Any], sync_turn: Callable[[], bool]
) -> Callable[..., bool]:
    """The loop body to run instead of `body` (the manager's own, wrapped): each turn first asks `sync_turn`
    (which may add requests) whether its step needs the host."""
    in_flight = [False]  # under async batching: a launched step not taken in yet

    def launch(batch_processor: Any) -> tuple[bool, bool]:
        """Prepare and launch a step, taking in none: (launched, the loop goes on)."""
        before = manager.current_batch
        more = bool(body(batch_processor, True))
        return manager.current_batch != before, more

    def one_turn(batch_processor: Any, bootstrapping: bool) -> bool:
        sync = sync_turn()
        if not batch_processor.use_async_batching:
            with _eager(batch_processor, sync):
                return bool(body(batch_processor, bootstrapping))
        if sync:
            if in_flight[0]:
                _take_in(batch_processor)
                in_flight[0] = False
            with _eager(batch_processor, True):
                launched, more = launch(batch_processor)
            if launched:
                _take_in(batch_processor)
            return launched or more
        if bootstrapping or not in_flight[0]:  # (re)fill the pipeline
            launched, more = launch(batch_processor)
            in_flight[0] = launched
            return not bootstrapping if launched else more  # the manager's bootstrap loop ends on a launch
        before = manager.current_batch
        more = bool(body(batch_processor, False))  # launch the next step, take in the one before
        in_flight[0] = manager.current_batch != before
        return more

    return one_turn


def _take_in(batch_processor: Any) -> None:
    """Under async batching, after a launch: wait for the last launched step and update its requests. Its
    IO pair then holds no request, so that no later update takes it in again (transformers' loop, when it
    ends, takes in the pair it believes is in flight)."""
    io = batch_processor.inputs_and_outputs
    io.swap_io_pairs()
    batch_processor.update_batch()
    io.io_pairs[io.current_pair].host_io.requests_in_batch = []
    io.swap_io_pairs()


@contextmanager
def _eager(batch_processor: Any, eager: bool) -> Iterator[None]:
    """CUDA graphs off for the steps launched inside, when `eager`."""
    runner = batch_processor.model_runner
    graphs = runner.use_cuda_graph_varlen, runner.use_cuda_graph_decode
    if eager:
        runner.use_cuda_graph_varlen = runner.use_cuda_graph_decode = False
    try:
        yield
    finally:
        runner.use_cuda_graph_varlen, runner.use_cuda_graph_decode = graphs
