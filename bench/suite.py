"""The benchmark suite (`make bench`): one run measures, with real clients over loopback,

  (a) the headline, the chat workload (bench/chat_workload.py): clients holding multi-turn conversations
      with the server's default sampling, at 1 and 16 clients, ours through /ws (out of the box, the
      engine in a child process of the worker, and beside it with the engine as a thread of the worker)
      against `transformers serve --continuous-batching` through /v1 on the same conversations:
      aggregate tokens/s, time to first token by turn, inter-token latency, errors; against the raw
      forward pass (`model.generate` on the same turn sizes, batched as many as there are clients);
  (b) the limits (bench/machine_limits.py): this machine's matmul GFLOP/s in the model's dtype and
      memory GB/s, the raw forward's prefill FLOP/s and batch-1 decode bytes/s as fractions of them, and
      the service's prefill (time to first token of a long new prompt, bench/prefill.py) against the raw
      forward on the same tokens;
  (c) the greedy micro-benchmark, a second table (bench/greedy.py): one short prompt, greedy replies of
      --tokens, through /ws and /v1 of ours (and /ws of the engine-thread layout) and transformers serve's
      /v1 at --concurrency clients, against `model.generate`;
  (d) resident memory per worker (bench/resources.py);
  then structured outputs and tools (bench/openai_fields.py).

Our server runs out of the box: only the per-user limits are raised (one bench key stands for every client)
and MAX_WAITING to the largest greedy level, so that no level is refused. It prints tables, writes
bench/results/<date>-<host>-<device>.json with a PNG plot next to it, and rewrites this run's section of
BENCHMARKS.md (bench/report.py).

    .venv/bin/python -m bench.suite [--model PATH_OR_ID | --shape qwen2.5-0.5b] [--chat-clients 1,16]
        [--turns 5] [--max-reply N] [--tokens 64] [--concurrency 1,4,16,64] [--chats N] [--label NAME]

`--shape` builds a random-weight model with a real checkpoint's shape offline (bench/shaped_model.py),
for speed on real-sized models without a hub.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.chat_report import THREAD
from bench.chat_workload import TURNS, ChatLevel, conversations, measure_chat, raw_turn_tokens_per_second
from bench.greedy import CHATS, Level, in_order, measure, sampling_cost, ws_client
from bench.machine_limits import ForwardLimits, forward_limits, limits_summary, matmul_gflops, memory_gbps
from bench.openai_fields import measure_fields
from bench.prefill import long_prompt, prefill_seconds
from bench.report import all_targets, write
from bench.resources import cpu_seconds, worker_rss_mib
from bench.serving import KEY, Served, serve
from bench.shaped_model import SHAPES, make_shaped_model
from bench.single_stream import RawGenerate
from bench.transformers_serve import cache_pages, transformers_serve
from qwen_chat.engine.model.loader import resolve_dtype
from qwen_chat.engine.tiny import make_tiny_model

HERE = Path(__file__).parent
BENCHMARKS = HERE.parent / "BENCHMARKS.md"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model id or path (default: a freshly built tiny model)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="build a random model of this shape instead")
    parser.add_argument("--chat-clients", default="1,16", help="clients of the chat workload")
    parser.add_argument("--turns", type=int, default=TURNS, help="turns per conversation")
    parser.add_argument("--max-reply", type=int, help="cap every reply of the chat workload at this")
    parser.add_argument("--tokens", type=int, default=64, help="greedy micro-benchmark: tokens per reply")
    parser.add_argument("--concurrency", default="1,4,16,64", help="greedy micro-benchmark: clients")
    parser.add_argument("--chats", type=int, help="chats per client at every level (default: 40/20/16/6)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--engine", default="batch", choices=["batch", "simple"])
    parser.add_argument("--skip-transformers-serve", action="store_true")
    parser.add_argument(
        "--skip-openai-fields",
        action="store_true",
        help="skip structured outputs and tools (bench/openai_fields.py)",
    )
    parser.add_argument(
        "--skip-engine-thread", action="store_true", help="do not also run ours with its engine as a thread"
    )
    parser.add_argument("--label", default="", help="a name for this run's section of BENCHMARKS.md")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results", help="where the JSON and PNG go")
    parser.add_argument("--benchmarks", type=Path, default=BENCHMARKS, help="the Markdown file to update")
    return parser.parse_args()


@dataclass
class Plan:
    """What this run measures: the command line, resolved, and the model built when none was given."""

    args: argparse.Namespace
    levels: list[int]  # of the greedy micro-benchmark
    chat_levels: list[int]
    chats: dict[int, int]  # per greedy level, per client
    device: str
    dtype: str
    work: Path
    model: str
    model_label: str
    tiny: bool


def plan(args: argparse.Namespace) -> Plan:
    levels = [int(n) for n in args.concurrency.split(",")]
    chat_levels = [int(n) for n in args.chat_clients.split(",")]
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # One dtype for all three: transformers serve's own `auto` follows the weights, ours is float32 on CPU.
    dtype = str(resolve_dtype(args.dtype, torch.device(device))).removeprefix("torch.")
    work = Path(tempfile.mkdtemp(prefix="qwen-chat-bench-"))
    chats = {n: args.chats or CHATS.get(n, 2) for n in levels}
    if args.shape:
        model = str(make_shaped_model(work / args.shape, args.shape))
        model_label = f"random weights shaped like {args.shape} (bench/shaped_model.py)"
    else:
        model = args.model or str(make_tiny_model(work / "tiny-model"))
        model_label = args.model or "tiny (qwen-chat make-tiny-model)"
    tiny = not args.shape and not args.model
    return Plan(args, levels, chat_levels, chats, device, dtype, work, model, model_label, tiny)


@dataclass
class InProcess:
    """What is measured in this process before any server starts: the machine and the raw forward pass."""

    machine: dict[str, float]
    generate_tps: float
    raw_turn: dict[str, float]
    forward: ForwardLimits
    long_prompt: list[dict[str, str]]


def measure_in_process(p: Plan) -> InProcess:
    torch_dtype = getattr(torch, p.dtype)
    target = torch.device(p.device)
    machine = {"matmul_gflops": round(matmul_gflops(torch_dtype, target), 1),
               "memory_gbps": round(memory_gbps(target), 1)}  # fmt: skip
    print(f"machine: {machine}", flush=True)
    raw = RawGenerate(p.model, device=p.device, dtype=p.dtype)
    generate_tps = statistics.median(raw.run(p.args.tokens) for _ in range(5))
    print(f"model.generate, one stream: {generate_tps:.1f} tokens/s", flush=True)
    raw_turn = {
        str(n): round(raw_turn_tokens_per_second(raw.model, raw.prompts, conversations(n, p.args.turns,
                      p.args.max_reply)), 1)
        for n in p.chat_levels
    }  # fmt: skip
    print(f"raw forward, one turn: {raw_turn} tokens/s", flush=True)
    prompt = long_prompt()
    prefill_tokens = len(raw.prompts.encode_chat(prompt))
    forward = forward_limits(raw.model, prefill_tokens=prefill_tokens)
    del raw
    return InProcess(machine, generate_tps, raw_turn, forward, prompt)


def server_settings(p: Plan) -> dict[str, object]:
    every = p.levels + p.chat_levels
    return {
        # Out of the box but for the queue bound, so that no greedy level is refused, and the per-user
        # limits: one bench key stands for every client, each of them a user of its own in a deployment.
        "rate_limit": "1000000/minute",
        "max_waiting": max(every),
        "max_user_requests": max(every),
        "max_user_connections": max(every) + 4,  # + the probes' and prefill's sockets
        "workers": p.args.workers,
        "engine": p.args.engine,
        "device": p.device,
        "dtype": p.dtype,
        "log_level": "warning",
    }


def start_servers(stack: ExitStack, p: Plan) -> tuple[Served, Served | None, str | None]:
    """Ours, ours with its engine as a thread, transformers serve (the last two unless skipped), side by
    side until `stack` closes."""
    settings = server_settings(p)
    served = stack.enter_context(serve(p.model, p.work, **settings))
    threaded = None
    if not p.args.skip_engine_thread:
        threaded = stack.enter_context(serve(p.model, p.work, **settings, engine_process="false"))
    theirs = None
    if not p.args.skip_transformers_serve:
        blocks, page = cache_pages(p.device)
        theirs = stack.enter_context(transformers_serve(p.model, p.work, p.device, p.dtype, blocks, page))
    return served, threaded, theirs


@dataclass
class OverLoopback:
    """What is measured through the servers."""

    chat: list[ChatLevel]
    service_prefill: float
    levels: list[Level]
    fields: dict[str, Any] | None
    rss: list[float]
    cpu: dict[str, dict[str, float]]


def openai_fields(port: int, clients: int) -> dict[str, Any]:
    name = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    model_id = name.json()["data"][0]["id"]
    fields = asyncio.run(measure_fields(port, model_id, clients, rounds=2))
    print(f"structured outputs and tools: {fields}", flush=True)
    return fields


def measure_servers(p: Plan, prompt: list[dict[str, str]]) -> OverLoopback:
    """The chat workload, the service's prefill, the greedy micro-benchmark, structured outputs and tools,
    then memory and CPU time, all while the servers run."""
    args = p.args
    with ExitStack() as stack:
        served, threaded, theirs = start_servers(stack, p)
        ours = {"qwen-chat /ws": served.ws, **({THREAD: threaded.ws} if threaded else {})}
        for url in ours.values():
            asyncio.run(ws_client(url, 1, 4, Level("warm-up", 1)))
        chat = asyncio.run(measure_chat(ours, theirs, p.model, p.chat_levels, args.turns, args.max_reply))
        service_prefill = asyncio.run(prefill_seconds(served.ws, prompt))
        thread_port = threaded.port if threaded else None
        levels = asyncio.run(
            measure(served.port, thread_port, theirs, p.model, p.levels, args.tokens, p.chats)
        )
        fields = None if args.skip_openai_fields else openai_fields(served.port, max(p.chat_levels))
        rss = worker_rss_mib(served.proc.pid)
        cpu = {"qwen-chat": cpu_seconds(served.proc.pid)}
        if threaded:
            cpu["qwen-chat, engine thread"] = cpu_seconds(threaded.proc.pid)
    chat.sort(key=lambda level: (level.server, level.clients))
    return OverLoopback(chat, service_prefill, in_order(levels), fields, rss, cpu)


def result_of(p: Plan, raw: InProcess, over: OverLoopback, wall_seconds: float) -> dict[str, Any]:
    """The run's JSON (bench/results/*.json), the report's one source."""
    args = p.args
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": p.device,
        "gpu": torch.cuda.get_device_name(0) if p.device == "cuda" else None,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "model": p.model_label,
        "engine": args.engine,
        "dtype": p.dtype,
        "workers": args.workers,
        "turns": args.turns,
        "chat": [level.summary() for level in over.chat],
        "raw_turn_tokens_per_second": raw.raw_turn,
        "limits": limits_summary(raw.machine, raw.forward, over.service_prefill),
        "tokens_per_reply": args.tokens,
        "generate_tokens_per_second": round(raw.generate_tps, 1),
        "worker_rss_mib": [round(v, 1) for v in over.rss],
        "cpu_seconds": over.cpu,
        "levels": [level.summary() for level in over.levels],
        "openai_fields": over.fields,
        "wall_seconds": round(wall_seconds, 1),
    }
    cost = sampling_cost(result["levels"])
    if cost is not None:
        result["sampling_cost"] = cost
    result["targets"] = all_targets(result, p.tiny, over.fields)
    return result


def main() -> None:
    args = parse_args()
    p = plan(args)
    started = time.monotonic()
    raw = measure_in_process(p)
    over = measure_servers(p, raw.long_prompt)
    result = result_of(p, raw, over, time.monotonic() - started)
    write(result, args.out_dir, args.benchmarks, args.label or p.device, args.label, over.fields)


if __name__ == "__main__":
    main()
