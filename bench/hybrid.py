"""The hybrid section of `make bench`: Qwen3.5 (Gated DeltaNet + full attention) on the hybrid core.

One run measures, on a random model shaped like Qwen3.5-0.8B (bench/shaped_model.py) unless `--model` names
another:
  (a) the chat workload (bench/chat_workload.py's conversations, the server's default sampling) at 16
      clients through /ws, `/livez` latency polled meanwhile: aggregate tokens/s against two baselines run
      once the server has stopped, on the sizes the run had:
      - `model.generate` serving the same turns one request at a time (what `transformers serve` and the
        simple engine give on this family, whose batching manager refuses it): each turn's whole prompt
        prefilled, as `generate` keeps nothing between requests;
      - the raw batched forward: `generate` on 16 rows (greedy), each row's prompt as long as what the
        service prefilled per turn and its reply as long, so both do the same work;
  (b) one conversation alone, through /ws (the server keeps it) and through /v1/chat/completions (the
      client resends the history): each turn's time to first token and the prompt tokens it prefilled
      (`prompt_tokens - usage.prompt_tokens_details.cached_tokens`);
  (c) on the tiny Qwen3.5 (`make-tiny-model --family qwen3_5`): 16 streams against one, each a /ws
      connection asking 4 chats in turn, the server's default sampling.
It prints the tables, writes bench/results/<date>-<host>-hybrid.json and rewrites its section of
BENCHMARKS.md.

    .venv/bin/python -m bench.hybrid [--model PATH] [--clients 16] [--turns 5] [--max-reply 48]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from websockets.asyncio.client import connect

from bench.chat_workload import (
    TURNS,
    Conversation,
    conversations,
    generate_seconds,
    percentile,
    sse_data,
)
from bench.machine_limits import matmul_gflops, memory_gbps
from bench.report import save
from bench.serving import KEY, serve
from bench.shaped_model import make_shaped_model
from bench.single_stream import RawGenerate
from qwen_chat.engine.tiny import make_tiny_model
from qwen_chat.sampling_params import DEFAULTS

SHAPE = "qwen3.5-0.8b"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _settings(clients: int) -> dict[str, object]:
    # Out of the box but for the per-user limits: one bench key stands for every client.
    return {
        "rate_limit": "1000000/minute",
        "max_user_requests": clients,
        "max_user_connections": clients + 4,
        "max_waiting": clients * 2,
    }


class Turns:
    """Each turn of a run: time to first token, prompt tokens, of them cached, completion tokens."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, turn: int, ttft: float | None, usage: dict[str, Any]) -> None:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        self.rows.append(
            {
                "turn": turn + 1,
                "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
                "prompt_tokens": usage["prompt_tokens"],
                "prefilled": usage["prompt_tokens"] - cached,
                "completion_tokens": usage["completion_tokens"],
            }
        )

    def by_turn(self) -> list[dict[str, Any]]:
        """Per turn: the median time to first token, prompt tokens and prefilled tokens."""
        turns = sorted({row["turn"] for row in self.rows})
        out = []
        for turn in turns:
            rows = [row for row in self.rows if row["turn"] == turn]
            firsts = [row["ttft_ms"] for row in rows if row["ttft_ms"] is not None]
            out.append(
                {
                    "turn": turn,
                    "ttft_ms_p50": percentile(firsts, 50),
                    "prompt_tokens": round(statistics.mean(row["prompt_tokens"] for row in rows)),
                    "prefilled": round(statistics.mean(row["prefilled"] for row in rows)),
                }
            )
        return out

    @property
    def tokens(self) -> int:
        return sum(row["completion_tokens"] for row in self.rows)


async def ws_conversation(url: str, plan: Conversation, turns: Turns) -> None:
    async with connect(url, additional_headers=AUTH, max_size=None) as ws:
        for turn, cap in enumerate(plan.reply_caps):
            await ws.send(
                json.dumps({"type": "chat", "content": plan.message(turn), "params": {"max_new_tokens": cap}})
            )
            sent, first = time.perf_counter(), None
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] in ("token", "reasoning") and first is None:
                    first = time.perf_counter() - sent
                elif frame["type"] == "done":
                    turns.add(turn, first, frame["usage"])
                    break
                elif frame["type"] == "error":
                    raise RuntimeError(f"turn {turn + 1}: {frame}")


async def v1_conversation(base: str, plan: Conversation, turns: Turns) -> None:
    """The history resent every turn, as an OpenAI client does; the server's default sampling."""
    history: list[dict[str, str]] = []
    async with httpx.AsyncClient(timeout=600, headers=AUTH) as client:
        model = (await client.get(f"{base}/v1/models")).json()["data"][0]["id"]
        for turn, cap in enumerate(plan.reply_caps):
            history.append({"role": "user", "content": plan.message(turn)})
            body = {
                "model": model,
                "messages": history,
                "max_tokens": cap,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            sent, first, reply, usage = time.perf_counter(), None, [], None
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for data in sse_data(response):
                    chunk = json.loads(data)
                    delta = chunk["choices"][0].get("delta", {}) if chunk.get("choices") else {}
                    if (delta.get("content") or delta.get("reasoning_content")) and first is None:
                        first = time.perf_counter() - sent
                    reply.append(delta.get("content") or "")
                    usage = chunk.get("usage") or usage
            assert usage is not None, "no usage chunk"
            turns.add(turn, first, usage)
            history.append({"role": "assistant", "content": "".join(reply)})


async def poll_livez(base: str, stop: asyncio.Event) -> list[float]:
    """/livez latencies (ms), every 50 ms until `stop`."""
    seen: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            await client.get(f"{base}/livez")
            seen.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)
    return seen


async def chat(url: str, base: str, plans: list[Conversation]) -> dict[str, Any]:
    turns = Turns()
    stop = asyncio.Event()
    probe = asyncio.create_task(poll_livez(base, stop))
    started = time.perf_counter()
    await asyncio.gather(*(ws_conversation(url, plan, turns) for plan in plans))
    seconds = time.perf_counter() - started
    stop.set()
    livez = await probe
    return {
        "clients": len(plans),
        "tokens": turns.tokens,
        "seconds": round(seconds, 1),
        "tokens_per_second": round(turns.tokens / seconds, 2),
        "by_turn": turns.by_turn(),
        "livez_ms_p50": percentile(livez, 50),
        "livez_ms_p99": percentile(livez, 99),
    }


async def streams(url: str, count: int, tokens: int, chats: int = 4) -> float:
    """Aggregate tokens/s of `count` /ws connections at once, each asking `chats` stateless chats in turn of
    up to `tokens` tokens (the tiny model's random weights make an end of turn rare; the tokens counted are
    those generated)."""

    async def one(client: int) -> int:
        done = 0
        async with connect(url, additional_headers=AUTH, max_size=None) as ws:
            for chat in range(chats):
                message = {"role": "user", "content": f"Tell me about the sea, {client}.{chat}."}
                await ws.send(
                    json.dumps({"type": "chat", "messages": [message], "params": {"max_new_tokens": tokens}})
                )
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "done":
                        done += int(frame["usage"]["completion_tokens"])
                        break
                    if frame["type"] == "error":
                        raise RuntimeError(frame)
        return done

    started = time.perf_counter()
    done = await asyncio.gather(*(one(client) for client in range(count)))
    return sum(done) / (time.perf_counter() - started)


def raw_baselines(model_dir: str, chat_run: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """In this process, the server stopped: `generate` on the chat run's turns one request at a time (each
    turn's mean prompt whole, its mean reply) and on as many rows as it had clients (each row the mean tokens
    the service prefilled per turn, the mean reply); the machine's matmul and memory limits. All on `device`,
    the one the service ran on."""
    raw = RawGenerate(model_dir, device)
    model = raw.model
    target = next(model.parameters()).device
    turns = chat_run["by_turn"]
    reply = max(1, round(chat_run["tokens"] / (chat_run["clients"] * len(turns))))

    def seconds(rows: int, prompt: int) -> float:
        return generate_seconds(model, rows, prompt, reply)

    alone = sum(seconds(1, turn["prompt_tokens"]) for turn in turns)
    prefilled = round(statistics.mean(turn["prefilled"] for turn in turns))
    batched = seconds(chat_run["clients"], prefilled)
    dtype = next(model.parameters()).dtype
    weights = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    element = torch.tensor([], dtype=dtype).element_size()
    return {
        "reply_tokens": reply,
        "generate_one_at_a_time_tps": round(len(turns) * reply / alone, 2),
        "batched_prompt_tokens": prefilled,
        "generate_batched_tps": round(chat_run["clients"] * reply / batched, 2),
        "weights_per_token": weights,
        "weight_bytes": weights * element,
        "matmul_gflops": round(matmul_gflops(dtype, target), 1),
        "memory_gbps": round(memory_gbps(target), 1),
    }


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = args.model or str(make_shaped_model(work / SHAPE, SHAPE))
    plans = conversations(args.clients, args.turns, args.max_reply)
    result: dict[str, Any] = {
        "date": str(dt.date.today()),
        "host": platform.node(),
        "model": args.model or f"random weights shaped like {SHAPE} (bench/shaped_model.py)",
        "max_reply": args.max_reply,
    }
    with serve(model, work, **_settings(args.clients), device=args.device) as served:
        base = f"http://127.0.0.1:{served.port}"
        result["chat"] = asyncio.run(chat(served.ws, base, plans))
        alone = Turns()
        asyncio.run(ws_conversation(served.ws, plans[-1], alone))
        result["ws_alone"] = alone.by_turn()
        resent = Turns()
        asyncio.run(v1_conversation(base, plans[-1], resent))
        result["v1_alone"] = resent.by_turn()
    result["raw"] = raw_baselines(model, result["chat"], args.device)
    tiny = str(make_tiny_model(work / "tiny-qwen3_5", family="qwen3_5"))
    with serve(tiny, work, **_settings(16), device=args.device) as served:
        asyncio.run(streams(served.ws, 1, 4, chats=1))  # warm
        one = asyncio.run(streams(served.ws, 1, args.tokens))
        many = asyncio.run(streams(served.ws, 16, args.tokens))
    result["tiny_streams"] = {
        "one_tps": round(one, 1),
        "sixteen_tps": round(many, 1),
        "ratio": round(many / one, 2),
    }
    return result


def markdown(result: dict[str, Any]) -> str:
    raw, chat_run = result["raw"], result["chat"]
    ours = chat_run["tokens_per_second"]
    step_flops = 2 * raw["weights_per_token"] * ours / 1e9
    alone_bytes = raw["weight_bytes"] * raw["generate_one_at_a_time_tps"] / 1e9
    first, last = result["ws_alone"][0], result["ws_alone"][-1]
    v1_first, v1_last = result["v1_alone"][0], result["v1_alone"][-1]
    tiny = result["tiny_streams"]
    lines = [
        f"{result['date']}, {result['model']}, replies capped at {result['max_reply']} tokens, the server's "
        f"default sampling (temperature {DEFAULTS.temperature}, top_p {DEFAULTS.top_p}). "
        f"`python -m bench.hybrid` (part of `make bench`).",
        "",
        "| | measured | target | met |",
        "|---|---|---|---|",
        _row(
            f"chat, {chat_run['clients']} clients: tokens/s against `generate` serving the same turns one "
            "request at a time",
            f"{ours:.1f} / {raw['generate_one_at_a_time_tps']:.1f} = "
            f"{ours / raw['generate_one_at_a_time_tps']:.2f}x",
            ">= 4x",
            ours / raw["generate_one_at_a_time_tps"] >= 4,
        ),
        _row(
            f"chat, {chat_run['clients']} clients: against `generate` on {chat_run['clients']} rows of "
            f"{raw['batched_prompt_tokens']} prompt and {raw['reply_tokens']} reply tokens (greedy)",
            f"{ours:.1f} / {raw['generate_batched_tps']:.1f} = {ours / raw['generate_batched_tps']:.2f}",
            ">= 0.9",
            ours / raw["generate_batched_tps"] >= 0.9,
        ),
        _row(
            "/ws alone: turn 5's time to first token against turn 1's",
            f"{last['ttft_ms_p50']} / {first['ttft_ms_p50']} ms = {_ratio(last, first)}; turn {last['turn']} "
            f"prefilled {last['prefilled']} of {last['prompt_tokens']} prompt tokens",
            "<= 1.2x",
            _ratio(last, first) <= 1.2,
        ),
        _row(
            "/v1 alone, history resent: turn 5 against turn 1",
            f"{v1_last['ttft_ms_p50']} / {v1_first['ttft_ms_p50']} ms = {_ratio(v1_last, v1_first)}; turn "
            f"{v1_last['turn']} prefilled {v1_last['prefilled']} of {v1_last['prompt_tokens']}",
            "<= 1.2x",
            _ratio(v1_last, v1_first) <= 1.2,
        ),
        _row(
            "tiny Qwen3.5: 16 streams against one",
            f"{tiny['sixteen_tps']} / {tiny['one_tps']} tokens/s = {tiny['ratio']}x",
            ">= 5x",
            tiny["ratio"] >= 5,
        ),
        "",
        f"`/livez` during the {chat_run['clients']}-client chat: p50 {chat_run['livez_ms_p50']} ms, "
        f"p99 {chat_run['livez_ms_p99']} ms. "
        f"The chat's {ours:.1f} tokens/s is {step_flops:.1f} GFLOP/s of weights, "
        f"{step_flops / raw['matmul_gflops']:.0%} of this machine's measured matmul "
        f"({raw['matmul_gflops']} GFLOP/s); `generate` alone reads {alone_bytes:.1f} GB/s of weights, "
        f"{alone_bytes / raw['memory_gbps']:.0%} of its measured memory bandwidth "
        f"({raw['memory_gbps']} GB/s).",
        "",
        f"| turn | /ws TTFT p50 ({chat_run['clients']} clients) | /ws prefilled ({chat_run['clients']}) "
        "| /ws TTFT alone | /ws prefilled alone "
        "| /v1 TTFT alone | /v1 prefilled alone |",
        "|---|---|---|---|---|---|---|",
    ]
    for many, ws, v1 in zip(chat_run["by_turn"], result["ws_alone"], result["v1_alone"], strict=False):
        lines.append(
            f"| {ws['turn']} | {many['ttft_ms_p50']} ms | {many['prefilled']} of {many['prompt_tokens']} | "
            f"{ws['ttft_ms_p50']} ms | {ws['prefilled']} of {ws['prompt_tokens']} | {v1['ttft_ms_p50']} ms | "
            f"{v1['prefilled']} of {v1['prompt_tokens']} |"
        )
    return "\n".join(lines) + "\n"


def _ratio(last: dict[str, Any], first: dict[str, Any]) -> float:
    return round((last["ttft_ms_p50"] or 0) / (first["ttft_ms_p50"] or 1), 2)


def _row(what: str, measured: str, target: str, met: bool) -> str:
    return f"| {what} | {measured} | {target} | {'yes' if met else 'no'} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a hybrid checkpoint instead of the shaped Qwen3.5-0.8B")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--device",
        default="auto",
        help="the service's and the baselines' device (auto: CUDA if there is one)",
    )
    parser.add_argument("--turns", type=int, default=TURNS)
    parser.add_argument("--max-reply", type=int, default=48, help="cap every reply of the chat workload")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream on the tiny model")
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--benchmarks", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--label", default="cpu-qwen3.5-0.8b-hybrid")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        result = measure(args, Path(work))
    out = args.out_dir / f"{result['date']}-{result['host']}-{args.label}.json"
    save(result, out, args.benchmarks, args.label, markdown(result))


if __name__ == "__main__":
    main()
