"""The batch sampler's static mode, the one CUDA steps run (graphs, async batching), checked on CPU: it
makes no host sync a CUDA graph could not capture, and it picks the tokens the eager mode picks. And the
manager's loop turn that runs a step needing the host synchronously (`hf_internals/turns.py`), against a
stand-in of transformers' async pipeline."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from qwen_chat.engine.core.batch_sampler import BatchSampler
from qwen_chat.engine.core.sampling import CANDIDATES
from qwen_chat.engine.hf_internals import turns
from qwen_chat.sampling_params import SamplingParams
from tests.support.request_states import Future as _Future
from tests.support.request_states import State as _State

VOCAB = 3000
PARAMS = {
    "greedy": SamplingParams(64, 0.0, 1.0, 1.0),
    "defaults": SamplingParams(64, 0.7, 0.8, 1.05, seed=3),
    "whole vocabulary": SamplingParams(64, 1.0, 1.0, 1.0, seed=5),
    "top_k and min_p": SamplingParams(64, 0.6, 0.95, 1.0, top_k=20, min_p=0.05, seed=6),
    "penalties": SamplingParams(
        64, 0.6, 0.95, 1.1, top_k=20, presence_penalty=1.5, frequency_penalty=0.5, seed=7
    ),
    "greedy penalised": SamplingParams(64, 0.0, 1.0, 1.3, presence_penalty=0.5, frequency_penalty=0.25),
}


def _sampler(static: bool) -> tuple[BatchSampler, list[_State]]:
    sampler = BatchSampler(slots=8, vocab_size=VOCAB, device=torch.device("cpu"), static=static)
    states = []
    for n, (name, params) in enumerate(PARAMS.items()):
        sampler.register(name, params)
        states.append(_State(name, [(7 * n + i) % VOCAB for i in range(20 + n)]))
    return sampler, states


def _peaked(rows: int) -> torch.Tensor:
    """Logits spread like a trained model's (every kept set within the candidates), some tokens favoured so
    the penalties bite."""
    scores = torch.randn(rows, VOCAB) * 4
    scores[:, 100:110] += 2
    return scores


def test_static_steps_pick_the_eager_steps_tokens_with_padding_rows_beside_them() -> None:
    torch.manual_seed(0)
    (eager, eager_states), (static, static_states) = _sampler(False), _sampler(True)
    padding = 2  # rows a padded CUDA step adds (up to its slots), owned by no request
    for _ in range(30):
        scores = _peaked(len(PARAMS))
        arg = eager.prepare_tensor_args([_Future(s) for s in eager_states])
        picked = eager(scores.clone(), arg).argmax(-1)
        arg = static.prepare_tensor_args([_Future(s) for s in static_states])
        padded = torch.cat([scores, torch.randn(padding, VOCAB)])
        static_picked = static(padded, arg[: len(padded)]).argmax(-1)
        assert static_picked[: len(PARAMS)].tolist() == picked.tolist()
        for states in (eager_states, static_states):
            for state, token in zip(states, picked.tolist(), strict=True):
                state.generated_tokens.append(token)
    # Penalties ran on the same tables: the replies repeat what the penalties allow, identically.
    assert [s.generated_tokens for s in static_states] == [s.generated_tokens for s in eager_states]


def test_a_static_step_cuts_a_nucleus_past_the_candidates_where_the_eager_one_sorts_the_vocabulary() -> None:
    torch.manual_seed(1)
    flat = torch.randn(len(PARAMS), VOCAB) * 0.3  # top_p 0.8 of this keeps far more than 512 tokens
    static, states = _sampler(True)
    picked = static(flat.clone(), static.prepare_tensor_args([_Future(s) for s in states])).argmax(-1)
    candidates = flat[1].topk(CANDIDATES).indices.tolist()  # the defaults' row: no penalty on these ids
    assert int(picked[1]) in candidates
    eager, states = _sampler(False)
    whole = eager(flat.clone(), eager.prepare_tensor_args([_Future(s) for s in states])).argmax(-1)
    # Rows that filter nothing, or whose top_k keeps them on the candidates, agree.
    assert picked[[0, 2, 3]].tolist() == whole[[0, 2, 3]].tolist()


def test_a_static_step_has_no_host_sync_a_cuda_graph_could_not_capture() -> None:
    """torch.compile's tracer, asked for one whole graph, fails on what a CUDA graph capture would: a
    branch on device values or a read of one (`bool()`, `.item()`, `.tolist()`, `nonzero`)."""
    for static in (True, False):
        sampler, states = _sampler(static)
        arg = sampler.prepare_tensor_args([_Future(s) for s in states])
        traced = torch.compile(sampler.__call__, fullgraph=True, backend="eager", dynamic=False)
        scores = torch.randn(len(PARAMS), VOCAB) * 0.01  # flat: the eager mode must take its sorted path
        if static:
            traced(scores, arg[: len(PARAMS)].clone())
        else:
            with pytest.raises(Exception, match="data-dependent"):
                traced(scores, arg[: len(PARAMS)].clone())
        torch._dynamo.reset()


class _Pair:
    def __init__(self) -> None:
        self.host_io = self
        self.requests_in_batch: list[int] = []


class _AsyncPipeline:
    """Transformers' manager and async batch processor as the turn sees them: two IO pairs, a body that
    prepares and launches a step (and, unless bootstrapping, takes in the one before), graph flags, and
    the update the manager's loop runs once more when it ends."""

    use_async_batching = True

    def __init__(self) -> None:
        self.current_batch = 0
        self.io_pairs = [_Pair(), _Pair()]
        self.current_pair = 0
        self.launched: list[tuple[int, bool, bool]] = []  # step, graphs on, every step before taken in
        self.taken_in: list[int] = []
        self.model_runner = self
        self.use_cuda_graph_varlen = self.use_cuda_graph_decode = True
        self.inputs_and_outputs = self

    def swap_io_pairs(self) -> None:
        self.current_pair = 1 - self.current_pair

    def update_batch(self) -> None:
        for step in self.io_pairs[self.current_pair].requests_in_batch:
            assert step not in self.taken_in, f"step {step} taken in twice"
            self.taken_in.append(step)

    def body(self, _: Any, bootstrapping: bool) -> bool:
        step = self.current_batch
        graphs = self.use_cuda_graph_varlen and self.use_cuda_graph_decode
        self.launched.append((step, graphs, self.taken_in == list(range(step))))
        self.io_pairs[self.current_pair].requests_in_batch = [step]
        self.current_batch += 1
        self.swap_io_pairs()
        if bootstrapping:
            return False
        self.update_batch()
        return True

    def loop_ends(self) -> None:
        """What the manager's loop does after its last turn: take in the pair it believes in flight."""
        self.swap_io_pairs()
        self.update_batch()


def test_a_step_that_needs_the_host_runs_eagerly_after_the_step_in_flight_and_the_pipeline_refills() -> None:
    pipeline = _AsyncPipeline()
    plan = iter([False, False, False, True, True, False, False, True, False, False])
    needs_host: list[bool] = []

    def sync_turn() -> bool:
        needs_host.append(next(plan))
        return needs_host[-1]

    turn = turns.turn(pipeline, pipeline.body, sync_turn)
    while turn(pipeline, True):  # the manager's bootstrap loop, then its main loop
        pass
    for _ in range(9):
        turn(pipeline, False)
    for (step, graphs, after_all), sync in zip(pipeline.launched, needs_host, strict=True):
        assert graphs is not sync  # a step needing the host is never a graph replay...
        if sync:  # ...and is prepared knowing every token before it, and taken in within its own turn
            assert after_all and step in pipeline.taken_in
    # Every step is taken in once, in order; only the last one launched is still in flight.
    assert pipeline.taken_in == list(range(len(needs_host) - 1))
    assert pipeline.use_cuda_graph_varlen and pipeline.use_cuda_graph_decode
    pipeline.loop_ends()
    assert pipeline.taken_in == list(range(len(needs_host)))


def test_the_loop_ending_after_a_synchronous_step_takes_nothing_in_twice() -> None:
    pipeline = _AsyncPipeline()
    turn = turns.turn(pipeline, pipeline.body, lambda: True)
    turn(pipeline, True)
    turn(pipeline, False)
    pipeline.loop_ends()  # asserts: no step taken in twice
    assert pipeline.taken_in == [0, 1]


def _async_run(discard_at: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """A seeded row with penalties beside a greedy one, stepped as async batching steps them: each step is
    prepared before the one before it is taken in. At step `discard_at` the row is paused while in flight:
    its token is discarded and it sits out the next step, as transformers' offloading does. Each position
    of a row gets the same logits in every run. Returns the row's reply, its slot's counts and the counts
    its kept tokens make."""
    torch.manual_seed(5)
    logits = torch.randn(16, 2, 64) * 2
    sampler = BatchSampler(slots=2, vocab_size=64, device=torch.device("cpu"), static=True)
    params = SamplingParams(64, 0.9, 1.0, 1.0, seed=1, presence_penalty=1.0, frequency_penalty=0.5)
    sampler.register("row", params)
    sampler.register("other", SamplingParams(64, 0.0, 1.0, 1.0))
    row, other = _State("row", [1, 2, 3]), _State("other", [4, 5])
    position = {"row": 0, "other": 0}  # tokens each has, in its state or in flight
    kept: list[int] = []
    in_flight: list[tuple[_State, int]] = []
    for step in range(10):
        states = [s for s in (row, other) if not (s is row and step == discard_at + 1)]
        scores = torch.stack([logits[position[s.request_id], n] for n, s in enumerate(states)])
        picked = (
            sampler(scores, sampler.prepare_tensor_args([_Future(s) for s in states])).argmax(-1).tolist()
        )
        for state, token in in_flight:  # the step before is taken in once this one is launched
            state.generated_tokens.append(token)
        in_flight = []
        for state, token in zip(states, picked, strict=True):
            if not (state is row and step == discard_at):
                in_flight.append((state, token))
                position[state.request_id] += 1
                kept += [token] if state is row else []
    return (
        row.generated_tokens[:6],
        sampler.tables.counts[0, :64].clone(),
        torch.bincount(torch.tensor(kept), minlength=64),
    )


def test_a_row_paused_with_its_step_in_flight_loses_that_steps_token_and_draw_and_nothing_else() -> None:
    """Under async batching transformers may pause a request whose step is in flight and drop that step's
    token: the row's tables forget the token and its seed draws that position again with the same uniform."""
    tokens, counts, expected = _async_run(discard_at=-5)
    assert torch.equal(counts, expected.int())
    paused_tokens, paused_counts, paused_expected = _async_run(discard_at=2)
    assert paused_tokens == tokens
    assert torch.equal(paused_counts, paused_expected.int())
