"""The chat workload, the headline of `make bench`: what users send, measured through real clients.

Each client holds one connection and runs one multi-turn conversation: TURNS user messages, each of the
client's own length (a fixed, seeded spread of tens to hundreds of tokens across clients, the same length
on every turn so that turn 5's time to first token compares with turn 1's), each reply capped by a seeded
spread of caps. Nothing but the reply cap is sent, so the server samples with its defaults; the history
grows turn by turn:
- ours through /ws, as the browser page talks to it: `{"type": "chat", "content": ...}` per turn, the
  server keeping the conversation;
- `transformers serve` through /v1/chat/completions with the whole history each turn and our default
  temperature and top_p sent explicitly. It refuses `repetition_penalty` (422, an unexpected field), and
  its batching manager drops that processor anyway, so it does less work per token than we do.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch
from websockets.asyncio.client import connect

from bench.serving import KEY
from qwen_chat.sampling_params import DEFAULTS

TURNS = 5
# Words per user message, one per client in turn (20 to 200 tokens with the tiny tokenizer); reply caps.
MESSAGE_WORDS = (6, 12, 24, 40, 8, 16, 30, 60)
REPLY_CAPS = (32, 64, 96, 128, 192)
_WORDS = [
    "the",
    "service",
    "keeps",
    "every",
    "user",
    "waiting",
    "less",
    "when",
    "many",
    "conversations",
    "share",
    "one",
    "model",
    "and",
    "its",
    "cache",
    "please",
    "explain",
    "how",
    "batching",
    "paged",
    "attention",
    "scheduling",
    "and",
    "sampling",
    "work",
    "together",
    "in",
    "practice",
]


@dataclass(frozen=True)
class Conversation:
    words: int
    reply_caps: tuple[int, ...]
    seed: int

    def message(self, turn: int) -> str:
        rng = random.Random(self.seed * 1000 + turn)
        return " ".join(rng.choice(_WORDS) for _ in range(self.words))


def conversations(clients: int, turns: int = TURNS, max_reply: int | None = None) -> list[Conversation]:
    """The same conversations for every server and run: seeded by client index."""
    plans = []
    for client in range(clients):
        rng = random.Random(client)
        caps = tuple(min(rng.choice(REPLY_CAPS), max_reply or 10**6) for _ in range(turns))
        plans.append(Conversation(MESSAGE_WORDS[client % len(MESSAGE_WORDS)], caps, client))
    return plans


@dataclass
class ChatLevel:
    """One server at one number of clients running conversations."""

    server: str
    clients: int
    turns: int = 0
    tokens: int = 0
    seconds: float = 0.0
    ttft_ms_by_turn: dict[int, list[float]] = field(default_factory=dict)
    itl_ms: list[float] = field(default_factory=list)
    errors: int = 0

    def record(self, turn: int, sent: float, arrivals: list[float], tokens: int) -> None:
        self.turns += 1
        self.tokens += tokens
        if arrivals:
            self.ttft_ms_by_turn.setdefault(turn, []).append((arrivals[0] - sent) * 1000)
            self.itl_ms.extend((b - a) * 1000 for a, b in itertools.pairwise(arrivals))

    def summary(self) -> dict[str, Any]:
        every = [v for values in self.ttft_ms_by_turn.values() for v in values]
        return {
            "server": self.server,
            "clients": self.clients,
            "turns": self.turns,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds else 0.0,
            "ttft_ms_p50": percentile(every, 50),
            "ttft_ms_p95": percentile(every, 95),
            "ttft_ms_p50_by_turn": {
                str(turn + 1): percentile(values, 50) for turn, values in sorted(self.ttft_ms_by_turn.items())
            },
            "ttft_ms_p95_by_turn": {
                str(turn + 1): percentile(values, 95) for turn, values in sorted(self.ttft_ms_by_turn.items())
            },
            "itl_ms_p50": percentile(self.itl_ms, 50),
            "itl_ms_p95": percentile(self.itl_ms, 95),
            "errors": self.errors,
        }


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 2)


async def ws_conversation(url: str, plan: Conversation, level: ChatLevel) -> None:
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, max_size=None) as ws:
        for turn, cap in enumerate(plan.reply_caps):
            message = {"type": "chat", "content": plan.message(turn), "params": {"max_new_tokens": cap}}
            await ws.send(json.dumps(message))
            sent, arrivals = time.perf_counter(), []
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] in ("token", "reasoning"):  # a thinking model thinks out loud first
                    arrivals.append(time.perf_counter())
                elif frame["type"] == "done":
                    level.record(turn, sent, arrivals, frame["usage"]["completion_tokens"])
                    break
                elif frame["type"] == "error":
                    level.errors += 1
                    return


async def openai_conversation(
    base_url: str, model: str | None, plan: Conversation, level: ChatLevel, client: httpx.AsyncClient
) -> None:
    """Streamed /v1/chat/completions, the history resent each turn, our default temperature and top_p sent."""
    history: list[dict[str, str]] = []
    for turn, cap in enumerate(plan.reply_caps):
        history.append({"role": "user", "content": plan.message(turn)})
        body: dict[str, Any] = {
            "messages": history,
            "max_tokens": cap,
            "temperature": DEFAULTS.temperature,
            "top_p": DEFAULTS.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if model:
            body["model"] = model
        sent = time.perf_counter()
        streamed = await stream_completion(client, f"{base_url}/chat/completions", body)
        if streamed is None:
            level.errors += 1
            return
        arrivals, reply, count = streamed
        level.record(turn, sent, arrivals, count)
        history.append({"role": "assistant", "content": reply})


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data:` payloads of a Server-Sent Events stream, split at line ends only: httpx's `aiter_lines`
    also splits at U+2028, U+0085 and the like, which JSON carries unescaped inside strings."""
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        *lines, buffer = buffer.split("\n")
        for line in lines:
            line = line.removesuffix("\r")
            if line.startswith("data: ") and line != "data: [DONE]":
                yield line[6:]


async def stream_completion(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[list[float], str, int] | None:
    """A streamed chat completion: token arrival times, the reply's text and its completion tokens (from
    the usage chunk, else one per text chunk); None when the server refused it."""
    arrivals: list[float] = []
    text: list[str] = []
    count = 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return None
        async for data in sse_data(response):
            try:
                chunk = json.loads(data)
            except ValueError:  # a chunk that is not JSON is the server's error, counted as one
                print(f"not JSON from {url}: {data[:300]!r}", flush=True)
                return None
            delta = chunk["choices"][0].get("delta", {}) if chunk.get("choices") else {}
            if delta.get("content") or delta.get("reasoning_content"):  # thinking is output too
                arrivals.append(time.perf_counter())
                text.append(delta.get("content") or "")
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
    return arrivals, "".join(text), count or len(arrivals)


async def measure_chat(
    ours: dict[str, str], theirs: str | None, model: str, levels: list[int], turns: int, max_reply: int | None
) -> list[ChatLevel]:
    """Every level on every server: `ours` maps a label to a /ws URL (our engine process, our engine
    thread), `theirs` is transformers serve's base URL. They take turns, in reverse order at every other
    level, so that the machine's drift falls on all alike."""
    results: list[ChatLevel] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=600, limits=limits) as other:

        async def talk(server: str, clients: int) -> None:
            level = ChatLevel(server, clients)
            plans = conversations(clients, turns, max_reply)
            started = time.perf_counter()
            if server in ours:
                await asyncio.gather(*(ws_conversation(ours[server], plan, level) for plan in plans))
            else:
                url = f"{theirs}/v1"
                await asyncio.gather(*(openai_conversation(url, model, plan, level, other) for plan in plans))
            level.seconds = time.perf_counter() - started
            results.append(level)

        servers = [*ours, *(["transformers serve"] if theirs is not None else [])]
        for index, clients in enumerate(levels):
            for server in servers if index % 2 == 0 else reversed(servers):
                await talk(server, clients)
    return results


def raw_turn_tokens_per_second(model: Any, prompts: Any, plans: list[Conversation]) -> float:
    """The raw forward pass on one turn of this many clients: `model.generate` (greedy, no sampling cost)
    on a batch of len(plans) prompts of the mean turn-1 prompt length, for the mean reply cap. The
    ceiling for the service, which also prefills only each turn's new tokens once its prefix is cached."""
    lengths = [len(prompts.encode_chat([{"role": "user", "content": p.message(0)}])) for p in plans]
    prompt_tokens = round(statistics.mean(lengths))
    new_tokens = round(statistics.mean(cap for p in plans for cap in p.reply_caps))
    return len(plans) * new_tokens / generate_seconds(model, len(plans), prompt_tokens, new_tokens)


def generate_seconds(model: Any, rows: int, prompt_tokens: int, new_tokens: int) -> float:
    """How long `model.generate` (greedy) takes to write exactly `new_tokens` after `rows` random prompts of
    `prompt_tokens`."""
    device = next(model.parameters()).device
    ids = torch.randint(10, min(600, model.config.vocab_size), (rows, max(1, prompt_tokens)), device=device)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
    return time.perf_counter() - started
