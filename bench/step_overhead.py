"""The batch engine's time per decode step outside the model's forward, at 1 and 64 rows: the host work a GPU
must hide behind its forwards (issue 35). In this process, on the tiny model (`make-tiny-model`), `--model`
or a random model of `--shape`, on `--device` (float32 on CPU, the model's own dtype on CUDA):

- the raw forward: the model alone decoding `rows` rows one token each, on a cache holding each row's
  prompt, with transformers' own attention (timed before the engine starts, which re-registers SDPA);
- the engine: `BatchCore` (the service's batch core, transformers' manager and our sampler) decoding `rows`
  requests at once with the server's default sampling; its step is the time between consecutive steps once
  every row decodes, and the part of it in the manager's timed forward-and-sample call is reported too.

The difference is the step's time outside the forward: the manager's scheduling and batch preparation, our
sampler's plan, the step router. Each figure is the median over `--steps` steps.

    .venv/bin/python -m bench.step_overhead [--rows 1 64] [--steps 60] [--prompt 64] [--device cuda]
        [--model PATH | --shape qwen2.5-1.5b]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from bench.shaped_model import SHAPES, make_shaped_model
from qwen_chat.engine.core import make_core
from qwen_chat.engine.model.loader import load_model
from qwen_chat.engine.tiny import make_tiny_model
from qwen_chat.engine.wire import Step, Submit
from qwen_chat.sampling_params import DEFAULTS, SamplingParams
from qwen_chat.settings import Settings


def raw_forward_ms(model_dir: str, rows: int, prompt: int, steps: int, device: str) -> float:
    dtype = torch.float32 if device == "cpu" else "auto"
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = model.to(device).eval()
    ids = torch.randint(10, 600, (rows, prompt), device=device)
    times = []
    with torch.inference_mode():
        cache = DynamicCache()
        logits = model(input_ids=ids, cache=cache, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)
        for _ in range(steps + 5):
            _sync(device)
            started = time.perf_counter()
            logits = model(input_ids=token, cache=cache, use_cache=True).logits
            _sync(device)
            times.append(time.perf_counter() - started)
            token = logits[:, -1:].argmax(-1)
    return statistics.median(times[5:]) * 1000


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def engine_step_ms(model_dir: str, rows: int, prompt: int, steps: int, device: str) -> tuple[float, float]:
    """(median time between steps, median of the manager's timed forward-and-sample call), in ms."""
    settings = Settings(model=model_dir, device=device, max_running=max(rows, 1), engine_process=False)  # type: ignore[arg-type]
    loaded = load_model(settings)
    arrivals: list[tuple[float, int, float]] = []
    done = threading.Event()

    def sink(step: Step) -> None:
        arrivals.append((time.perf_counter(), len(step.rows), step.seconds))
        if len(arrivals) > steps + 40:
            done.set()

    core = make_core(settings, loaded, sink)
    core.start()
    arrivals.clear()
    params = SamplingParams(**{**DEFAULTS.__dict__, "max_new_tokens": steps + 80})
    for n in range(rows):
        prompt_ids = torch.randint(10, 600, (prompt,)).tolist()
        core.submit(Submit(f"r{n}", prompt_ids, params, stop_token_ids=[]))
    done.wait(600)
    core.stop()
    full = [(at, seconds) for at, count, seconds in arrivals if count == rows]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(full)][-steps:]
    return statistics.median(gaps) * 1000, statistics.median(s for _, s in full[-steps:]) * 1000


def measure(
    rows: list[int], steps: int, prompt: int, device: str = "cpu", model: str | None = None, shape: str = ""
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as work:
        if shape:
            model = str(make_shaped_model(Path(work) / shape, shape))
        model_dir = model or str(make_tiny_model(Path(work) / "tiny", family="qwen2"))
        raw = {n: raw_forward_ms(model_dir, n, prompt, steps, device) for n in rows}
        results = []
        for n in rows:
            step, called = engine_step_ms(model_dir, n, prompt, steps, device)
            results.append(
                {
                    "rows": n,
                    "engine_step_ms": round(step, 2),
                    "manager_forward_and_sample_ms": round(called, 2),
                    "raw_forward_ms": round(raw[n], 2),
                    "outside_forward_ms": round(step - raw[n], 2),
                }
            )
        return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="a checkpoint folder (default: the tiny model)")
    parser.add_argument("--shape", default="", choices=["", *sorted(SHAPES)])
    args = parser.parse_args()
    torch.manual_seed(0)
    for line in measure(args.rows, args.steps, args.prompt, args.device, args.model, args.shape):
        print(json.dumps(line))


if __name__ == "__main__":
    main()
