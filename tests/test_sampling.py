"""The sampling arithmetic both engines share, and the batch engine's sampler, on logits alone (no model)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from qwen_chat.engine.core import sampling
from qwen_chat.engine.core.batch_sampler import BatchSampler
from qwen_chat.engine.core.sampling import OccurrencePenalty, draw
from qwen_chat.sampling_params import SamplingParams
from tests.support.request_states import Future as _Future
from tests.support.request_states import State as _State


def _nucleus(logits: torch.Tensor, top_p: float) -> set[int]:
    kept = TopPLogitsWarper(top_p)(torch.zeros(1, 1, dtype=torch.long), logits.unsqueeze(0))[0]
    return set(torch.isfinite(kept).nonzero().flatten().tolist())


@pytest.mark.parametrize("spread", [8.0, 0.5], ids=["peaked", "flat"])
def test_draw_samples_transformers_nucleus_in_proportion(spread: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2000) * spread
    nucleus = _nucleus(logits, 0.8)
    uniforms = torch.rand(4000, dtype=torch.float64)
    rows = logits.expand(len(uniforms), -1)
    chosen = draw(rows, torch.full((len(uniforms),), 1.0), torch.full((len(uniforms),), 0.8), uniforms)
    assert set(chosen.tolist()) <= nucleus
    # The most likely token turns up as often as its share of the nucleus says.
    probs = logits.softmax(-1)
    best = int(probs.argmax())
    share = float(probs[best] / probs[sorted(nucleus)].sum())
    assert abs(float((chosen == best).double().mean()) - share) < 0.05 + 0.1 * share


def test_the_candidate_path_and_the_full_vocabulary_path_pick_the_same_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(1)
    logits = torch.randn(64, 5000) * 6
    temperature, top_p = torch.full((64,), 0.7), torch.full((64,), 0.8)
    uniforms = torch.rand(64, dtype=torch.float64)
    fast = draw(logits, temperature, top_p, uniforms)
    monkeypatch.setattr(sampling, "CANDIDATES", 1)  # every row overflows into the full path
    assert torch.equal(fast, draw(logits, temperature, top_p, uniforms))


def _warped(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """What transformers samples from, in its order of warpers (as `generate` builds them): temperature, top_k,
    top_p, min_p."""
    scores, ids = logits.unsqueeze(0).clone(), torch.zeros(1, 1, dtype=torch.long)
    scores = TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    scores = TopPLogitsWarper(top_p)(ids, scores)
    if min_p > 0:
        scores = MinPLogitsWarper(min_p)(ids, scores)
    return scores[0].softmax(-1)


@pytest.mark.parametrize(
    ("vocab", "temperature", "top_k", "top_p", "min_p"),
    [
        (300, 0.6, 20, 0.95, 0.0),  # Qwen3's card, thinking
        (300, 0.7, 20, 0.8, 0.0),  # Qwen3's card, without
        (300, 1.0, 0, 1.0, 0.05),  # min_p alone
        (300, 1.3, 40, 0.7, 0.1),  # all three cutting
        (2000, 0.9, 700, 1.0, 0.0),  # a top_k past the candidates: the full-vocabulary path
        (2000, 2.0, 0, 0.99, 0.001),  # a flat row: the full-vocabulary path
    ],
)
def test_draw_keeps_exactly_what_transformers_warpers_keep_in_proportion(
    vocab: int, temperature: float, top_k: int, top_p: float, min_p: float
) -> None:
    """A uniform in the middle of each kept token's share (in vocabulary order) draws that token: so the set
    and every probability in it are transformers' own."""
    torch.manual_seed(vocab + top_k)
    logits = torch.randn(vocab) * 3
    logits[5] = logits[6] = logits.topk(max(top_k, 1)).values[-1]  # ties with the k-th are kept
    probs = _warped(logits, temperature, top_k, top_p, min_p)
    kept = probs.nonzero().flatten()
    cumulative = probs[kept].double().cumsum(0)
    middles = cumulative - probs[kept].double() / 2
    n = len(kept)
    chosen = draw(
        logits.expand(n, -1),
        torch.full((n,), temperature),
        torch.full((n,), top_p),
        middles / cumulative[-1],
        top_k=torch.full((n,), top_k),
        min_p=torch.full((n,), min_p),
    )
    assert torch.equal(chosen, kept)


def test_top_k_1_is_greedy_whatever_the_temperature_and_uniform() -> None:
    torch.manual_seed(5)
    logits = torch.randn(32, 3000) * 2
    chosen = draw(
        logits,
        torch.full((32,), 2.0),
        torch.ones(32),
        torch.rand(32, dtype=torch.float64),
        top_k=torch.ones(32, dtype=torch.long),
    )
    assert torch.equal(chosen, logits.argmax(-1))


def _openai_penalised(
    row: torch.Tensor, generated: list[int], presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's definition, token by token: mu[j] - c[j] * frequency - (c[j] > 0) * presence."""
    expected = row.clone()
    for token in set(generated):
        count = generated.count(token)
        expected[token] -= count * frequency + presence
    return expected


def test_presence_and_frequency_penalties_follow_openai_over_generated_tokens_only() -> None:
    torch.manual_seed(6)
    scores = torch.randn(3, 50)
    sampler = BatchSampler(slots=3, vocab_size=50, device=torch.device("cpu"))
    sampler.register("pf", SamplingParams(8, 0.0, 1.0, 1.0, presence_penalty=1.5, frequency_penalty=0.5))
    sampler.register("g", SamplingParams(8, 0.0, 1.0, 1.0))
    sampler.register("neg", SamplingParams(8, 0.0, 1.0, 1.0, presence_penalty=-2.0, frequency_penalty=-0.25))
    # The prompt's 7 and 9 are not counted; then 11 three times and 7 once are generated.
    states = [_State("pf", [7, 9, 7]), _State("g", [4]), _State("neg", [3])]
    for tokens in ([11, 4], [7, 4], [11, 4, 11]):
        _step(sampler, _forcing(tokens, 50), states[: len(tokens)])
    # The manager re-queues a paused request with its generated tokens moved into its initial tokens.
    states[0] = _State("pf", [7, 9, 7, 11, 7, 11])
    _step(sampler, _forcing([11, 4], 50), states[:2])
    out = sampler(scores.clone(), sampler.prepare_tensor_args([_Future(s) for s in states]))
    assert torch.allclose(out[0], _openai_penalised(scores[0], [11, 7, 11, 11], 1.5, 0.5))
    assert torch.equal(out[1], scores[1])
    assert torch.allclose(out[2], _openai_penalised(scores[2], [11], -2.0, -0.25))
    # The simple engine's processor, on the same row: the same numbers.
    simple = OccurrencePenalty(
        SamplingParams(8, 0.0, 1.0, 1.0, presence_penalty=1.5, frequency_penalty=0.5), 3
    )
    ids = torch.tensor([[7, 9, 7, 11, 7, 11, 11]])
    assert torch.allclose(simple(ids, scores[:1].clone())[0], out[0])


def _step(sampler: BatchSampler, scores: torch.Tensor, states: list[_State]) -> torch.Tensor:
    """One step as the manager runs it: the sampler's slots in, the argmax out, added to each state."""
    chosen = sampler(scores.clone(), sampler.prepare_tensor_args([_Future(s) for s in states])).argmax(-1)
    for state, token in zip(states, chosen.tolist(), strict=True):
        state.generated_tokens.append(token)
    return chosen


def _forcing(tokens: list[int], vocab: int) -> torch.Tensor:
    """Logits whose greedy pick is `tokens[i]` in row i, whatever the penalties."""
    scores = torch.full((len(tokens), vocab), -10.0)
    scores[torch.arange(len(tokens)), torch.tensor(tokens)] = 10.0
    return scores


def test_a_seeded_row_draws_the_same_tokens_alone_or_in_any_batch() -> None:
    torch.manual_seed(2)
    steps = [torch.randn(5, 300) * 3 for _ in range(6)]
    seeded = SamplingParams(8, 0.9, 0.9, 1.2, seed=7)
    others = [SamplingParams(8, 0.0, 1.0, 1.0), SamplingParams(8, 1.0, 0.5, 1.0, seed=1)]

    def run(ids: list[str], params: list[SamplingParams], row: int) -> list[int]:
        sampler = BatchSampler(slots=4, vocab_size=300, device=torch.device("cpu"))
        states = [_State(i, [1, 2, 3]) for i in ids]
        for i, p in zip(ids, params, strict=True):
            sampler.register(i, p)
        for scores in steps:
            _step(sampler, scores[: len(ids)], states)
        return states[row].generated_tokens

    alone = run(["s"], [seeded], 0)
    # Same logits row, other rows around it (put first so its row index changes too).
    scores_row_moved = [torch.cat([s[1:3], s[:1]]) for s in steps]
    steps[:] = scores_row_moved
    together = run(["a", "b", "s"], [*others, seeded], 2)
    assert alone == together


def test_repetition_penalty_matches_transformers_and_greedy_rows_pass_untouched() -> None:
    torch.manual_seed(3)
    scores = torch.randn(2, 50)
    sampler = BatchSampler(slots=2, vocab_size=50, device=torch.device("cpu"))
    sampler.register("p", SamplingParams(8, 0.0, 1.0, 1.3))
    sampler.register("g", SamplingParams(8, 0.0, 1.0, 1.0))
    states = [_State("p", [4, 9, 4], [11]), _State("g", [4, 9])]
    out = sampler(scores.clone(), sampler.prepare_tensor_args([_Future(s) for s in states]))
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([[4, 9, 4, 11]]), scores[:1].clone())
    assert torch.allclose(out[0], expected[0]) and torch.equal(out[1], scores[1])
    # A step with greedy rows only hands the manager its own tensor back: no copy, no work.
    arg = sampler.prepare_tensor_args([_Future(states[1])])
    only_greedy = scores[1:].clone()
    assert sampler(only_greedy, arg) is only_greedy and torch.equal(only_greedy, scores[1:])


def test_a_slot_is_reused_with_a_clean_seen_row() -> None:
    sampler = BatchSampler(slots=1, vocab_size=20, device=torch.device("cpu"))
    sampler.register("first", SamplingParams(4, 0.0, 1.0, 2.0))
    _step(sampler, torch.zeros(1, 20), [_State("first", [5, 6])])
    sampler.forget("first")
    sampler.register("second", SamplingParams(4, 0.0, 1.0, 2.0))
    scores = torch.ones(1, 20)
    out = sampler(scores.clone(), sampler.prepare_tensor_args([_Future(_State("second", [7]))]))
    assert out[0, 7] == 0.5 and out[0, 5] == 1.0 and out[0, 6] == 1.0
    with pytest.raises(IndexError):
        sampler.register("third", SamplingParams(4, 0.0, 1.0, 1.0))


def test_a_paused_and_requeued_request_keeps_every_token_penalised() -> None:
    sampler = BatchSampler(slots=1, vocab_size=40, device=torch.device("cpu"))
    sampler.register("r", SamplingParams(8, 0.0, 1.0, 2.0))
    state = _State("r", [1, 2], [3, 4])
    sampler.prepare_tensor_args([_Future(state)])
    # The manager re-queues a paused request with its generated tokens moved into the prompt.
    resumed = _State("r", [1, 2, 3, 4], [5])
    out = sampler(torch.ones(1, 40), sampler.prepare_tensor_args([_Future(resumed)]))
    assert set((out[0] == 0.5).nonzero().flatten().tolist()) == {1, 2, 3, 4, 5}


def test_a_top_p_that_rounds_to_zero_keeps_the_most_likely_token() -> None:
    torch.manual_seed(4)
    logits = torch.randn(3, 2000)
    for top_p in (1e-50, 1e-9):
        chosen = draw(logits, torch.ones(3), torch.full((3,), top_p), torch.rand(3, dtype=torch.float64))
        assert torch.equal(chosen, logits.argmax(-1))
