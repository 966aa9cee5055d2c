"""What the batch engine's sampler costs per step, on logits alone: 16 rows of the 151,936-token vocabulary
with 600-token prompts and 200 generated tokens per row, one more each step, against the manager's own argmax
(all a greedy step pays). Three ways to sample:

- the service's own defaults (temperature 0.7, top_p 0.8, repetition penalty 1.05);
- Qwen3's card (temperature 0.6, top_p 0.95, top_k 20) with a presence penalty of 1.5, what the Qwen3.5/3.6
  cards suggest against endless repetition: the headline;
- the same with min_p 0.05 and a frequency penalty of 0.5 (every parameter at once).

Peaked logits (spread like a trained model's, the kept set within the candidates) and flat ones (a top_p-only
row takes the full-vocabulary path; top_k keeps the others on the candidates). Each figure is the median of 5
runs of 10 steps, with the lowest and highest.

    .venv/bin/python -m bench.sampler_cost [--rows 16] [--vocab 151936]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from qwen_chat.engine.core.batch_sampler import BatchSampler
from qwen_chat.sampling_params import DEFAULTS, SamplingParams

WAYS = {
    "service defaults": DEFAULTS,
    "Qwen3 card + presence 1.5": SamplingParams(64, 0.6, 0.95, 1.0, top_k=20, presence_penalty=1.5),
    "everything at once": SamplingParams(
        64, 0.6, 0.95, 1.05, top_k=20, min_p=0.05, presence_penalty=1.5, frequency_penalty=0.5
    ),
}


@dataclass
class _State:
    request_id: str
    initial_tokens: list[int]
    generated_tokens: list[int] = field(default_factory=list)


@dataclass
class _Future:
    state: _State


def _ms(step: Callable[[], object], runs: int = 5, repeats: int = 10) -> tuple[float, float, float]:
    """Median, lowest and highest milliseconds per step over `runs` runs of `repeats` steps."""
    step()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        times.append((time.perf_counter() - started) / repeats * 1000)
    return statistics.median(times), min(times), max(times)


def measure(rows: int, vocab: int, spread: float, params: SamplingParams) -> tuple[float, float, float]:
    torch.manual_seed(0)
    params = SamplingParams(**{**params.__dict__, "seed": 1})
    scores = torch.randn(rows, vocab) * spread
    states = [_State(f"r{i}", list(range(i, 600 + i))) for i in range(rows)]
    sampler = BatchSampler(rows, vocab, torch.device("cpu"))
    for state in states:
        sampler.register(state.request_id, params)
    futures = [_Future(state) for state in states]
    sampler.prepare_tensor_args(futures)  # the prompts reach the sampler
    for state in states:  # 200 generated tokens, handed over as a paused request's are when it resumes
        state.initial_tokens.extend(torch.randint(0, vocab, (200,)).tolist())

    def step() -> None:
        arg = sampler.prepare_tensor_args(futures)
        chosen = sampler(scores.clone(), arg).argmax(-1)
        for state, token in zip(states, chosen.tolist(), strict=True):
            state.generated_tokens.append(token)

    return _ms(step)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=151936)
    args = parser.parse_args()
    scores = torch.randn(args.rows, args.vocab)
    greedy = _ms(lambda: scores.clone().argmax(-1))
    print(f"{args.rows} rows, vocabulary {args.vocab:,}; ms per step, median (lowest-highest) of 5 runs")
    print(f"greedy step (the argmax alone): {greedy[0]:.1f} ({greedy[1]:.1f}-{greedy[2]:.1f})")
    for name, spread in (("peaked (logit sd 3)", 3.0), ("flat (logit sd 0.5)", 0.5)):
        for way, params in WAYS.items():
            median, low, high = measure(args.rows, args.vocab, spread, params)
            print(f"{name}, {way}: {median:.1f} ({low:.1f}-{high:.1f}), {median / greedy[0]:.1f}x greedy")


if __name__ == "__main__":
    main()
