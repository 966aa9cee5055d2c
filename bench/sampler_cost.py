"""What the batch engine's sampler costs per step, on logits alone: 16 rows of the 151,936-token vocabulary
at the server's defaults (temperature 0.7, top_p 0.8, repetition penalty 1.05, 600-token histories),
against the manager's own argmax (all a greedy step pays). Peaked logits (spread like a trained model's,
the nucleus within the 256 candidates) and flat ones (the full-vocabulary path).

    .venv/bin/python -m bench.sampler_cost [--rows 16] [--vocab 151936]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch

from qwen_chat.engine.core.batch_sampler import BatchSampler
from qwen_chat.sampling_params import DEFAULTS, SamplingParams


@dataclass
class _State:
    request_id: str
    initial_tokens: list[int]
    generated_tokens: list[int] = field(default_factory=list)


@dataclass
class _Future:
    state: _State


def _ms(step: object, repeats: int = 10) -> float:
    step()  # type: ignore[operator]
    started = time.perf_counter()
    for _ in range(repeats):
        step()  # type: ignore[operator]
    return (time.perf_counter() - started) / repeats * 1000


def measure(rows: int, vocab: int, spread: float) -> tuple[float, float]:
    """Milliseconds per step: the greedy step's argmax alone, and the sampler at the defaults plus argmax."""
    torch.manual_seed(0)
    params = SamplingParams(64, DEFAULTS.temperature, DEFAULTS.top_p, DEFAULTS.repetition_penalty, seed=1)
    scores = torch.randn(rows, vocab) * spread
    states = [_State(f"r{i}", list(range(i, 600 + i))) for i in range(rows)]
    sampler = BatchSampler(rows, vocab, torch.device("cpu"))
    for state in states:
        sampler.register(state.request_id, params)
    futures = [_Future(state) for state in states]
    arg = torch.zeros(rows, dtype=torch.int32)

    def sampled() -> None:
        sampler.prepare_tensor_args(futures)
        sampler(scores.clone(), arg).argmax(-1)

    return _ms(lambda: scores.clone().argmax(-1)), _ms(sampled)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=151936)
    args = parser.parse_args()
    for name, spread in (("peaked (logit sd 3)", 3.0), ("flat (logit sd 0.5)", 0.5)):
        greedy, ours = measure(args.rows, args.vocab, spread)
        print(f"{name}: greedy step {greedy:.1f} ms, default sampling {ours:.1f} ms ({args.rows} rows)")


if __name__ == "__main__":
    main()
