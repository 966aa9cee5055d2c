"""The machine's limits, measured in the same run as the benchmarks, and how close the raw model forward
pass gets to them: dense matmul GFLOP/s against prefill GFLOP/s, memory read GB/s against the weight bytes
that batch-1 decoding streams per token. `limits_summary` is the limits' part of a `make bench` result.

    .venv/bin/python -m bench.machine_limits
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Callable[[], object], device: torch.device, seconds: float = 0.0) -> float:
    """Best seconds per call of `fn` after one warm-up: at least 3 repeats, more until `seconds` have passed.

    A repeat runs enough calls back to back (about seconds/20) that synchronising on fast devices is noise.
    """
    fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    best = time.perf_counter() - start
    inner = max(1, int(seconds / 20 / max(best, 1e-9)))
    repeats, deadline = 1, time.perf_counter() + seconds
    while repeats < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / inner)
        repeats += 1
    return best


def matmul_gflops(dtype: torch.dtype, device: torch.device, size: int = 2048, seconds: float = 2.0) -> float:
    """Best dense `torch.mm` throughput of two size x size `dtype` tensors on `device`, in GFLOP/s (2n^3)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, dtype=dtype, device=device)
    return 2 * size**3 / _best_seconds(lambda: torch.mm(a, b, out=out), device, seconds) / 1e9


def memory_gbps(device: torch.device, mib: int = 1024, seconds: float = 2.0) -> float:
    """Best memory read bandwidth on `device` in GB/s (1e9 bytes): `sum()` of a `mib` MiB float32 tensor.

    Counts only the tensor's bytes read; a reduction writes nothing back, so unlike a copy there is no
    write-allocate traffic to guess at.
    """
    x = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=device)
    return x.numel() * x.element_size() / _best_seconds(x.sum, device, seconds) / 1e9


@dataclass(frozen=True)
class ForwardLimits:
    """What the raw forward pass achieves: prefill compute rate and batch-1 decode weight-streaming rate."""

    prefill_tokens: int
    prefill_seconds: float
    prefill_gflops: float
    decode_tokens_per_second: float
    weight_bytes_per_token: int
    decode_gbps: float


def prefill_flops(model: nn.Module, tokens: int) -> int:
    """FLOPs of one prefill of `tokens` tokens keeping the last position's logits.

    2 * (decoder nn.Linear weights) * tokens + causal attention (QK^T and AV) + 2 * lm_head weights.
    """
    lm_head = model.get_output_embeddings()
    matmul_params = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not lm_head
    )
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 2 * 2 * config.num_hidden_layers * config.num_attention_heads * head_dim * tokens**2 // 2
    return 2 * matmul_params * tokens + attention + 2 * lm_head.weight.numel()


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of parameters read per decoded token: all but the input embedding table, unless it is tied."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # shared tensors counted once
    embed = model.get_input_embeddings().weight
    if embed is not model.get_output_embeddings().weight:
        total -= embed.numel() * embed.element_size()
    return total


def forward_limits(model: nn.Module, prefill_tokens: int = 512, decode_tokens: int = 32) -> ForwardLimits:
    """Measure prefill GFLOP/s and batch-1 greedy decode speed of a loaded causal LM (on its device, eval).

    Prefill: best of 3 forwards of `prefill_tokens` random ids with logits_to_keep=1, after a warm-up.
    Decode: best `generate` time for decode_tokens + 1 new tokens minus the best for 1 new token (the
    prefill alone), so exactly `decode_tokens` single-token forwards with the KV cache are timed.
    """
    device, generator = model.device, torch.Generator().manual_seed(0)
    with torch.inference_mode():
        ids = torch.randint(
            0, min(1000, model.config.vocab_size), (1, prefill_tokens), generator=generator
        ).to(device)
        prefill_seconds = _best_seconds(lambda: model(ids, logits_to_keep=1), device)

        prompt = torch.randint(0, min(1000, model.config.vocab_size), (1, 16), generator=generator).to(device)
        pad = getattr(model.config, "pad_token_id", None) or 0

        def generate(new: int) -> Callable[[], object]:
            options = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": pad}
            return lambda: model.generate(prompt, **options)

        full, prefill = _best_seconds(generate(decode_tokens + 1), device), _best_seconds(generate(1), device)
        decode_seconds = max(full - prefill, 1e-9)

    per_token = weight_bytes_per_token(model)
    tokens_per_second = decode_tokens / decode_seconds
    return ForwardLimits(
        prefill_tokens=prefill_tokens,
        prefill_seconds=prefill_seconds,
        prefill_gflops=prefill_flops(model, prefill_tokens) / prefill_seconds / 1e9,
        decode_tokens_per_second=tokens_per_second,
        weight_bytes_per_token=per_token,
        decode_gbps=per_token * tokens_per_second / 1e9,
    )


def fraction(value: float, limit: float) -> float:
    """value / limit rounded to 3 decimals; 0 when the limit is 0."""
    return round(value / limit, 3) if limit else 0.0


def limits_summary(
    machine: dict[str, float], forward: ForwardLimits, service_prefill: float
) -> dict[str, Any]:
    """The machine's limits (`matmul_gflops`, `memory_gbps`), the raw forward's figures as fractions of
    them, and the service's prefill (seconds) against the raw forward's."""
    return {
        **machine,
        "prefill_tokens": forward.prefill_tokens,
        "prefill_seconds": round(forward.prefill_seconds, 3),
        "prefill_gflops": round(forward.prefill_gflops, 1),
        "prefill_fraction_of_matmul": fraction(forward.prefill_gflops, machine["matmul_gflops"]),
        "decode_tokens_per_second": round(forward.decode_tokens_per_second, 1),
        "decode_gbps": round(forward.decode_gbps, 2),
        "decode_fraction_of_bandwidth": fraction(forward.decode_gbps, machine["memory_gbps"]),
        "service_prefill_seconds": round(service_prefill, 3),
        "service_prefill_vs_raw": fraction(forward.prefill_seconds, service_prefill),
    }


def main() -> None:
    """Measure a small random float32 Qwen2 on the CPU against the CPU's limits and print both."""
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    import transformers

    cpu = torch.device("cpu")
    shape = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = transformers.Qwen2Config(vocab_size=1024, num_key_value_heads=2, **shape)
    model = transformers.Qwen2ForCausalLM(config).to(torch.float32).eval()
    flops = matmul_gflops(torch.float32, cpu)
    bandwidth = memory_gbps(cpu)
    limits = forward_limits(model)
    print(f"matmul float32 cpu: {flops:.1f} GFLOP/s")
    print(f"memory read cpu:    {bandwidth:.1f} GB/s")
    print(
        f"prefill {limits.prefill_tokens} tokens: {limits.prefill_seconds * 1e3:.1f} ms, "
        f"{limits.prefill_gflops:.1f} GFLOP/s = {fraction(limits.prefill_gflops, flops)} of matmul"
    )
    print(
        f"decode batch 1: {limits.decode_tokens_per_second:.1f} tokens/s x "
        f"{limits.weight_bytes_per_token / 2**20:.2f} MiB/token = {limits.decode_gbps:.2f} GB/s "
        f"= {fraction(limits.decode_gbps, bandwidth)} of memory read"
    )


if __name__ == "__main__":
    main()
