"""The benchmark suite (`make bench`): one run measures, with real clients over loopback,

  (a) the headline, the chat workload (bench/chat_workload.py): clients holding multi-turn conversations
      with the server's default sampling, at 1 and 16 clients, ours through /ws (out of the box, the
      engine in a child process of the worker, and beside it with the engine as a thread of the worker)
      against `transformers serve --continuous-batching` through /v1 on the same conversations:
      aggregate tokens/s, time to first token by turn, inter-token latency, errors; against the raw
      forward pass (`model.generate` on the same turn sizes, batched as many as there are clients);
  (b) the limits (bench/machine_limits.py): this machine's matmul GFLOP/s in the model's dtype and
      memory GB/s, the raw forward's prefill FLOP/s and batch-1 decode bytes/s as fractions of them, and
      the service's prefill (time to first token of a long new prompt) against the raw forward on the
      same tokens;
  (c) the greedy micro-benchmark, a second table: one short prompt, greedy replies of --tokens, through
      /ws and /v1 of ours (and /ws of the engine-thread layout) and transformers serve's /v1 at
      --concurrency clients, against `model.generate`;
  (d) resident memory per worker.

Our server runs out of the box: only the per-user limits are raised (one bench key stands for every client)
and MAX_WAITING to the largest greedy level, so that no level is refused. It prints tables, writes
bench/results/<date>-<host>-<device>.json with a PNG plot next to it, and rewrites this run's section of
BENCHMARKS.md.

    .venv/bin/python bench/suite.py [--model PATH_OR_ID | --shape qwen2.5-0.5b] [--chat-clients 1,16]
        [--turns 5] [--max-reply N] [--tokens 64] [--concurrency 1,4,16,64] [--chats N] [--label NAME]

`--shape` builds a random-weight model with a real checkpoint's shape offline (bench/shaped_model.py),
for speed on real-sized models without a hub.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
from chat_report import THREAD, chat_markdown, chat_targets, draw_chat
from chat_workload import (
    TURNS,
    Conversation,
    conversations,
    measure_chat,
    percentile,
    raw_turn_tokens_per_second,
    stream_completion,
)
from machine_limits import ForwardLimits, forward_limits, fraction, matmul_gflops, memory_gbps
from openai_fields import markdown as fields_markdown
from openai_fields import measure_fields
from serving import KEY, serve, stop, wait_ok, worker_rss_mib
from shaped_model import SHAPES, make_shaped_model
from single_stream import PROMPT, RawGenerate
from websockets.asyncio.client import connect

from qwen_chat.engine.kv_cache import CPU_CACHE_TOKENS
from qwen_chat.engine.model_loader import resolve_dtype
from qwen_chat.engine.tiny_model import make_tiny_model

HERE = Path(__file__).parent
SAMPLED = "qwen-chat /ws, default sampling"
# The long new prompt whose prefill the service and the raw forward both time (about 500 tokens).
PREFILL_WORDS = 150
BENCHMARKS = HERE.parent / "BENCHMARKS.md"
# Enough chats per client that each level runs a few seconds on the tiny model, few enough that 64
# clients stay bounded. `--chats` sets one count for every level (for slower models).
CHATS = {1: 40, 4: 20, 16: 16, 64: 6}


@dataclass
class Level:
    """One server at one concurrency."""

    server: str
    concurrency: int
    chats: int = 0
    tokens: int = 0
    seconds: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "concurrency": self.concurrency,
            "chats": self.chats,
            "errors": self.errors,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens_per_second, 1),
            "ttft_ms_p50": percentile(self.ttft_ms, 50),
            "ttft_ms_p95": percentile(self.ttft_ms, 95),
            "itl_ms_p50": percentile(self.itl_ms, 50),
            "itl_ms_p95": percentile(self.itl_ms, 95),
            "health_ms_p99": percentile(self.health_ms, 99),
            "health_probes": len(self.health_ms),
        }


# --- clients ---------------------------------------------------------------------------------------------


class Timing:
    """Token arrival times of one chat, from the moment it was sent."""

    def __init__(self) -> None:
        self.sent = time.perf_counter()
        self.arrivals: list[float] = []

    def token(self) -> None:
        self.arrivals.append(time.perf_counter())

    def record(self, level: Level, tokens: int) -> None:
        level.chats += 1
        level.tokens += tokens
        if self.arrivals:
            level.ttft_ms.append((self.arrivals[0] - self.sent) * 1000)
            level.itl_ms.extend(
                (b - a) * 1000 for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)
            )


GREEDY = {"temperature": 0, "repetition_penalty": 1.0}


async def ws_client(
    url: str, chats: int, tokens: int, level: Level, sampling: dict[str, Any] = GREEDY
) -> None:
    params = {"max_new_tokens": tokens, **sampling}
    message = json.dumps(
        {"type": "chat", "messages": [{"role": "user", "content": PROMPT}], "params": params}
    )
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, max_size=None) as ws:
        for _ in range(chats):
            await ws.send(message)
            timing = Timing()
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] in ("token", "reasoning"):  # a thinking model thinks out loud first
                    timing.token()
                elif frame["type"] == "done":
                    timing.record(level, frame["usage"]["completion_tokens"])
                    break
                elif frame["type"] == "error":
                    level.errors += 1
                    break


async def openai_client(
    base_url: str, model: str | None, chats: int, tokens: int, level: Level, client: httpx.AsyncClient
) -> None:
    """Streamed /v1/chat/completions over plain httpx (the same client code for both servers)."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model:
        body["model"] = model
    for _ in range(chats):
        timing = Timing()
        streamed = await stream_completion(client, f"{base_url}/chat/completions", body)
        if streamed is None:
            level.errors += 1
            continue
        timing.arrivals, _, count = streamed
        timing.record(level, count)


async def probe_health(url: str, level: Level, load_done: asyncio.Event) -> None:
    """A probe every 50 ms while the load runs, as a kubelet would (but much more often)."""
    async with httpx.AsyncClient(timeout=10) as client:
        while not load_done.is_set():
            started = time.perf_counter()
            response = await client.get(url)
            if response.status_code == 200:
                level.health_ms.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)


async def run_level(
    level: Level, health_url: str, client: Callable[[Level], Awaitable[None]], clients: int
) -> Level:
    load_done = asyncio.Event()
    prober = asyncio.create_task(probe_health(health_url, level, load_done))
    started = time.perf_counter()
    await asyncio.gather(*(client(level) for _ in range(clients)))
    level.seconds = time.perf_counter() - started
    load_done.set()
    await prober
    return level


# --- servers ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def transformers_serve(
    model: str, work: Path, device: str, dtype: str, num_blocks: int, page: int
) -> Iterator[str]:
    """`transformers serve --continuous-batching` on 127.0.0.1; yields its base URL. Stopped by PID."""
    cache = work / "hf-hub-cache"  # it lists models from the hub cache, which must exist
    cache.mkdir(exist_ok=True)
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    command = [
        str(Path(sys.executable).with_name("transformers")),
        "serve",
        model,
        "--continuous-batching",
        "--cb-num-blocks",
        str(num_blocks),
        "--cb-block-size",
        str(page),
        "--cb-max-batch-tokens",
        "512" if device == "cpu" else "2048",
        "--device",
        device,
        "--dtype",
        dtype,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = (work / "transformers-serve.log").open("wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ok(f"http://127.0.0.1:{port}/health", proc, 300, f"transformers serve (see {log.name})")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, grace=30)
        log.close()


def cpu_seconds(master_pid: int) -> dict[str, float]:
    """CPU time over the whole run, of the workers (event loops) and of their engine processes."""

    def used(procs: list[psutil.Process]) -> float:
        return round(sum(p.cpu_times().user + p.cpu_times().system for p in procs), 1)

    workers = psutil.Process(master_pid).children()
    engines = [engine for worker in workers for engine in worker.children()]
    return {"workers": used(workers), "engine_processes": used(engines)}


# --- the run ----------------------------------------------------------------------------------------------


async def measure(
    port: int,
    thread_port: int | None,
    theirs: str | None,
    model: str,
    levels: list[int],
    tokens: int,
    chats: dict[int, int],
) -> list[Level]:
    """Every level on every server, which run side by side: ours (/ws, then /v1), ours with its engine
    as a thread (/ws, at `thread_port`) and transformers serve (at `theirs`) take turns at each level,
    in reverse order at every other level, so that the machine's drift over the run falls on all alike.
    An idle server costs nothing (each measured under 1 % CPU)."""
    ws_url = f"ws://127.0.0.1:{port}/ws"
    base = f"http://127.0.0.1:{port}"
    sampled_level = max((n for n in levels if n <= 16), default=levels[0])
    results: list[Level] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        httpx.AsyncClient(timeout=300, headers=headers, limits=limits) as http,
        httpx.AsyncClient(timeout=300, limits=limits) as other,
    ):
        served = (await http.get(f"{base}/v1/models")).json()["data"][0]["id"]
        await ws_client(ws_url, 1, 4, Level("warm-up", 1))  # the first chat pays for lazy initialisation
        if theirs:
            await openai_client(f"{theirs}/v1", model, 1, 4, Level("warm-up", 1), other)
        for index, clients in enumerate(levels):
            count = chats[clients]

            async def ours(clients: int = clients, count: int = count) -> None:
                results.append(
                    await run_level(
                        Level("qwen-chat /ws", clients),
                        f"{base}/livez",
                        lambda lv: ws_client(ws_url, count, tokens, lv),
                        clients,
                    )
                )
                if clients == sampled_level:  # the same, with the server's default sampling
                    results.append(
                        await run_level(
                            Level(SAMPLED, clients),
                            f"{base}/livez",
                            lambda lv: ws_client(ws_url, count, tokens, lv, sampling={}),
                            clients,
                        )
                    )
                results.append(
                    await run_level(
                        Level("qwen-chat /v1", clients),
                        f"{base}/livez",
                        lambda lv: openai_client(f"{base}/v1", served, count, tokens, lv, http),
                        clients,
                    )
                )

            async def thread(clients: int = clients, count: int = count) -> None:
                if thread_port is not None:
                    url = f"ws://127.0.0.1:{thread_port}/ws"
                    results.append(
                        await run_level(
                            Level(THREAD, clients),
                            f"http://127.0.0.1:{thread_port}/livez",
                            lambda lv: ws_client(url, count, tokens, lv),
                            clients,
                        )
                    )

            async def transformers(clients: int = clients, count: int = count) -> None:
                if theirs:
                    results.append(
                        await run_level(
                            Level("transformers serve", clients),
                            f"{theirs}/health",
                            lambda lv: openai_client(f"{theirs}/v1", model, count, tokens, lv, other),
                            clients,
                        )
                    )

            for turn in (ours, thread, transformers) if index % 2 == 0 else (transformers, thread, ours):
                await turn()
    return results


def main() -> None:
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
    args = parser.parse_args()
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
    started = time.monotonic()

    torch_dtype = getattr(torch, dtype)
    target = torch.device(device)
    machine = {"matmul_gflops": round(matmul_gflops(torch_dtype, target), 1),
               "memory_gbps": round(memory_gbps(target), 1)}  # fmt: skip
    print(f"machine: {machine}", flush=True)
    raw = RawGenerate(model, device=device, dtype=dtype)
    generate_tps = statistics.median(raw.run(args.tokens) for _ in range(5))
    print(f"model.generate, one stream: {generate_tps:.1f} tokens/s", flush=True)
    raw_turn = {
        str(n): round(raw_turn_tokens_per_second(raw.model, raw.prompts, conversations(n, args.turns,
                      args.max_reply)), 1)
        for n in chat_levels
    }  # fmt: skip
    print(f"raw forward, one turn: {raw_turn} tokens/s", flush=True)
    long_prompt = [{"role": "user", "content": Conversation(PREFILL_WORDS, (), seed=99).message(0)}]
    prefill_tokens = len(raw.prompts.encode_chat(long_prompt))
    forward = forward_limits(raw.model, prefill_tokens=prefill_tokens)
    del raw

    settings = {
        # Out of the box but for the queue bound, so that no greedy level is refused, and the per-user
        # limits: one bench key stands for every client, each of them a user of its own in a deployment.
        "rate_limit": "1000000/minute",
        "max_waiting": max(levels + chat_levels),
        "max_user_requests": max(levels + chat_levels),
        "max_user_connections": max(levels + chat_levels) + 4,  # + the probes' and prefill's sockets
        "workers": args.workers,
        "engine": args.engine,
        "device": device,
        "dtype": dtype,
        "log_level": "warning",
    }
    with ExitStack() as servers:
        served = servers.enter_context(serve(model, work, **settings))
        threaded = None
        if not args.skip_engine_thread:
            threaded = servers.enter_context(serve(model, work, **settings, engine_process="false"))
        theirs = None
        if not args.skip_transformers_serve:
            page = 256 if device == "cuda" else 32
            blocks = CPU_CACHE_TOKENS * 6 // 5 // page + 1  # our CPU cache, with its headroom
            theirs = servers.enter_context(transformers_serve(model, work, device, dtype, blocks, page))
        ours = {"qwen-chat /ws": served.ws, **({THREAD: threaded.ws} if threaded else {})}
        for url in ours.values():
            asyncio.run(ws_client(url, 1, 4, Level("warm-up", 1)))
        chat = asyncio.run(measure_chat(ours, theirs, model, chat_levels, args.turns, args.max_reply))
        service_prefill = asyncio.run(prefill_seconds(served.ws, long_prompt))
        thread_port = threaded.port if threaded else None
        measured = asyncio.run(measure(served.port, thread_port, theirs, model, levels, args.tokens, chats))
        fields = None
        if not args.skip_openai_fields:
            name = httpx.get(
                f"http://127.0.0.1:{served.port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}
            )
            model_id = name.json()["data"][0]["id"]
            fields = asyncio.run(measure_fields(served.port, model_id, max(chat_levels), rounds=2))
            print(f"structured outputs and tools: {fields}", flush=True)
        rss = worker_rss_mib(served.proc.pid)
        cpu = {"qwen-chat": cpu_seconds(served.proc.pid)}
        if threaded:
            cpu["qwen-chat, engine thread"] = cpu_seconds(threaded.proc.pid)
    order = ["qwen-chat /ws", SAMPLED, "qwen-chat /v1", THREAD, "transformers serve"]
    measured.sort(key=lambda level: (order.index(level.server), level.concurrency))
    chat.sort(key=lambda level: (level.server, level.clients))

    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "model": model_label,
        "engine": args.engine,
        "dtype": dtype,
        "workers": args.workers,
        "turns": args.turns,
        "chat": [level.summary() for level in chat],
        "raw_turn_tokens_per_second": raw_turn,
        "limits": limits_summary(machine, forward, service_prefill),
        "tokens_per_reply": args.tokens,
        "generate_tokens_per_second": round(generate_tps, 1),
        "worker_rss_mib": [round(v, 1) for v in rss],
        "cpu_seconds": cpu,
        "levels": [level.summary() for level in measured],
        "openai_fields": fields,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    sampled = next((lv for lv in result["levels"] if lv["server"] == SAMPLED), None)
    greedy = sampled and next(
        (
            lv
            for lv in result["levels"]
            if lv["server"] == "qwen-chat /ws" and lv["concurrency"] == sampled["concurrency"]
        ),
        None,
    )
    if sampled and greedy and greedy["tokens_per_second"]:
        result["sampling_cost"] = {
            "clients": sampled["concurrency"],
            "ratio": round(sampled["tokens_per_second"] / greedy["tokens_per_second"], 3),
        }
    result["targets"] = targets(result) + [target_row(*row) for row in chat_targets(result, tiny)]
    if fields is not None:
        n = fields["clients"]
        result["targets"] += [
            target_row(
                f"structured outputs, {n} streams: vs unconstrained",
                fields["constrained_ratio"],
                0.9,
                True,
                "x",
            ),
            target_row(
                f"five tools, {n} streams: decode rate vs none", fields["tools_decode_ratio"], 0.95, True, "x"
            ),
        ]
    stem = f"{dt.date.today()}-{platform.node()}-{device}{'-' + args.label if args.label else ''}"
    out = args.out_dir / f"{stem}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot, chat_plot = out.with_suffix(".png"), out.with_name(f"{stem}-chat.png")
    draw(result, plot)
    draw_chat(result, chat_plot)
    relative = lambda path: os.path.relpath(path, args.benchmarks.parent)  # noqa: E731
    chat_lines = chat_markdown(result, relative(chat_plot))
    if fields is not None:
        chat_lines = [*chat_lines, "", *fields_markdown(fields)]
    section = markdown(result, relative(plot), chat_lines)
    print(section)
    update_benchmarks(args.benchmarks, args.label or device, section)
    print(f"wrote {out}, {plot}, {chat_plot} and {args.benchmarks}")


async def prefill_seconds(ws_url: str, messages: list[dict[str, str]], runs: int = 3) -> float:
    """The service's time to first token for a long prompt it has not seen (best of `runs`)."""
    best = float("inf")
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}, max_size=None) as ws:
        for run in range(runs):
            fresh = [{"role": "user", "content": f"{run} {messages[0]['content']} {time.time()}"}]
            await ws.send(json.dumps({"type": "chat", "messages": fresh, "params": {"max_new_tokens": 1}}))
            sent = time.perf_counter()
            first = None
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] in ("token", "reasoning", "done") and first is None:
                    first = time.perf_counter() - sent
                if frame["type"] == "error":
                    raise RuntimeError(f"the prefill probe was refused: {frame}")
                if frame["type"] == "done":
                    break
            best = min(best, first or float("inf"))
    return best


def limits_summary(
    machine: dict[str, float], forward: ForwardLimits, service_prefill: float
) -> dict[str, Any]:
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


# --- reporting --------------------------------------------------------------------------------------------


def _level(result: dict[str, Any], server: str, concurrency: int) -> dict[str, Any] | None:
    return next(
        (lv for lv in result["levels"] if lv["server"] == server and lv["concurrency"] == concurrency), None
    )


def target_row(
    name: str, value: float | None, goal: float, higher_is_better: bool, unit: str
) -> dict[str, Any]:
    met = None if value is None else (value >= goal if higher_is_better else value <= goal)
    return {"target": name, "measured": None if value is None else round(value, 2), "goal": goal,
            "unit": unit, "higher_is_better": higher_is_better, "met": met}  # fmt: skip


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against this run (ratios within the run: the machine is shared and noisy)."""
    one = _level(result, "qwen-chat /ws", 1)
    sixteen = _level(result, "qwen-chat /ws", 16)
    theirs16 = _level(result, "transformers serve", 16)
    rows = []

    def row(name: str, value: float | None, goal: float, higher_is_better: bool, unit: str) -> None:
        rows.append(target_row(name, value, goal, higher_is_better, unit))

    if one:
        row(
            "one /ws stream vs model.generate",
            one["tokens_per_second"] / result["generate_tokens_per_second"],
            0.9,
            True,
            "x",
        )
    if one and sixteen:
        row(
            "16 /ws streams vs one stream (aggregate)",
            sixteen["tokens_per_second"] / one["tokens_per_second"],
            5.0,
            True,
            "x",
        )
    if sixteen and theirs16:
        row(
            "16 /ws streams vs transformers serve at 16",
            sixteen["tokens_per_second"] / theirs16["tokens_per_second"],
            1.5,
            True,
            "x",
        )
    if sixteen:
        row("time to first token p50 at 16 streams", sixteen["ttft_ms_p50"], 50, False, "ms")
        row("/livez p99 during the 16-stream load", sixteen["health_ms_p99"], 50, False, "ms")
    sixty_four = _level(result, "qwen-chat /ws", 64)
    if sixty_four:
        row("/livez p99 during the 64-stream load", sixty_four["health_ms_p99"], 20, False, "ms")
    thread_one = _level(result, THREAD, 1)
    if thread_one:
        row(
            "one /ws stream, engine thread, vs model.generate",
            thread_one["tokens_per_second"] / result["generate_tokens_per_second"],
            0.9,
            True,
            "x",
        )
    return rows


def markdown(result: dict[str, Any], plot: str, chat: list[str]) -> str:
    where = result["gpu"] or f"CPU, {result['cpu_cores']} cores"
    rss = ", ".join(f"{v:.0f} MiB" for v in result["worker_rss_mib"])
    lines = [
        f"Run {result['date']} on `{result['host']}` ({where}); model: {result['model']}; "
        f"engine `{result['engine']}`, {result['dtype']}, {result['workers']} worker(s), out of the box; "
        f"{result['wall_seconds']} s in all. Resident memory per worker (with its engine process) after the "
        f"load: {rss}. CPU time over the run: "
        + "; ".join(
            f"{name}: workers {c['workers']} s, engine processes {c['engine_processes']} s"
            for name, c in result["cpu_seconds"].items()
        )
        + ".",
        "",
        *chat,
        "### Targets",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for t in result["targets"]:
        op = ">=" if t.get("higher_is_better", t["unit"] == "x") else "<="
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(
            f"| {t['target']} | {t['measured']} {t['unit']} | {op} {t['goal']} {t['unit']} | {met} |"
        )
    lines += [
        "",
        "### Greedy micro-benchmark (second table)",
        "",
        f"One short prompt, {result['tokens_per_reply']} greedy tokens per reply (plus one level with the "
        f"default sampling). `model.generate` in-process, one stream: "
        f"**{result['generate_tokens_per_second']} tokens/s**.",
        "",
        "| server | clients | chats | tokens/s | TTFT p50 / p95 (ms) | ITL p50 / p95 (ms) "
        "| health p99 (ms) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lv in result["levels"]:
        lines.append(
            f"| {lv['server']} | {lv['concurrency']} | {lv['chats']} | {lv['tokens_per_second']} | "
            f"{lv['ttft_ms_p50']} / {lv['ttft_ms_p95']} | {lv['itl_ms_p50']} / {lv['itl_ms_p95']} | "
            f"{lv['health_ms_p99']} | {lv['errors']} |"
        )
    lines += ["", f"![tokens/s and time to first token against concurrency]({plot})"]
    return "\n".join(lines)


def update_benchmarks(path: Path, key: str, section: str) -> None:
    """Replace this device's section of BENCHMARKS.md (other devices' sections stay)."""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n## {key}\n\n{section}\n{end}"
    if start in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = sorted({lv["server"] for lv in result["levels"]})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server in servers:
        rows = sorted(
            (lv for lv in result["levels"] if lv["server"] == server), key=lambda lv: lv["concurrency"]
        )
        xs = [lv["concurrency"] for lv in rows]
        (line,) = left.plot(xs, [lv["tokens_per_second"] for lv in rows], marker="o", label=server)
        color = line.get_color()  # one colour per server on both sides
        right.plot(xs, [lv["ttft_ms_p50"] for lv in rows], marker="o", color=color, label=f"{server} p50")
        right.plot(
            xs,
            [lv["ttft_ms_p95"] for lv in rows],
            marker="x",
            linestyle="--",
            color=color,
            label=f"{server} p95",
        )
    left.axhline(
        result["generate_tokens_per_second"], color="grey", linestyle=":", label="model.generate, 1 stream"
    )
    for axis, title, unit in ((left, "aggregate tokens/s", "tokens/s"), (right, "time to first token", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks([lv for lv in sorted({lv["concurrency"] for lv in result["levels"]})])
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    fig.suptitle(
        f"{result['model']} on {result['gpu'] or 'CPU'}, {result['tokens_per_reply']} tokens per reply",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
