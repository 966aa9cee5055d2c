"""The greedy micro-benchmark of `make bench`, its second table: one short prompt, greedy replies of a fixed
number of tokens, through /ws and /v1 of ours (and /ws of ours with its engine as a thread) and through
transformers serve's /v1, at each number of concurrent clients; a /livez (or /health) probe every 50 ms
while the load runs. One level also runs with the server's default sampling, to price sampling.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import connect

from bench.chat_report import THREAD
from bench.chat_workload import percentile, stream_completion
from bench.serving import KEY
from bench.single_stream import PROMPT

SAMPLED = "qwen-chat /ws, default sampling"
# The order of the servers in the results (and the table).
SERVERS = ["qwen-chat /ws", SAMPLED, "qwen-chat /v1", THREAD, "transformers serve"]
# Enough chats per client that each level runs a few seconds on the tiny model, few enough that 64
# clients stay bounded. `--chats` sets one count for every level (for slower models).
CHATS = {1: 40, 4: 20, 16: 16, 64: 6}
GREEDY = {"temperature": 0, "repetition_penalty": 1.0}


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


# --- the run ----------------------------------------------------------------------------------------------

# One level of one server: its Level, the URL its probe polls, and one client's load.
Run = tuple[Level, str, Callable[[Level], Awaitable[None]]]


@dataclass
class Servers:
    """Where the clients go: ours (`port`, its model id `served`, `http` holding the bench key), ours with
    its engine as a thread (`thread_port`), transformers serve (`theirs`, a base URL, asked for `model`
    through `other`)."""

    port: int
    served: str
    http: httpx.AsyncClient
    thread_port: int | None
    theirs: str | None
    model: str
    other: httpx.AsyncClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


def ours_runs(s: Servers, clients: int, count: int, tokens: int, sampled: bool) -> list[Run]:
    """/ws, then (at the sampled level) /ws with the server's default sampling, then /v1."""
    health = f"{s.base}/livez"
    runs: list[Run] = [
        (Level("qwen-chat /ws", clients), health, lambda lv: ws_client(s.ws_url, count, tokens, lv))
    ]
    if sampled:  # the same, with the server's default sampling
        runs.append(
            (Level(SAMPLED, clients), health, lambda lv: ws_client(s.ws_url, count, tokens, lv, sampling={}))
        )
    runs.append(
        (
            Level("qwen-chat /v1", clients),
            health,
            lambda lv: openai_client(f"{s.base}/v1", s.served, count, tokens, lv, s.http),
        )
    )
    return runs


def thread_runs(s: Servers, clients: int, count: int, tokens: int) -> list[Run]:
    if s.thread_port is None:
        return []
    url = f"ws://127.0.0.1:{s.thread_port}/ws"
    health = f"http://127.0.0.1:{s.thread_port}/livez"
    return [(Level(THREAD, clients), health, lambda lv: ws_client(url, count, tokens, lv))]


def transformers_runs(s: Servers, clients: int, count: int, tokens: int) -> list[Run]:
    if not s.theirs:
        return []
    base = s.theirs
    return [
        (
            Level("transformers serve", clients),
            f"{base}/health",
            lambda lv: openai_client(f"{base}/v1", s.model, count, tokens, lv, s.other),
        )
    ]


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
    sampled_level = max((n for n in levels if n <= 16), default=levels[0])
    results: list[Level] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        httpx.AsyncClient(timeout=300, headers=headers, limits=limits) as http,
        httpx.AsyncClient(timeout=300, limits=limits) as other,
    ):
        served = (await http.get(f"http://127.0.0.1:{port}/v1/models")).json()["data"][0]["id"]
        s = Servers(port, served, http, thread_port, theirs, model, other)
        await ws_client(s.ws_url, 1, 4, Level("warm-up", 1))  # the first chat pays for lazy initialisation
        if theirs:
            await openai_client(f"{theirs}/v1", model, 1, 4, Level("warm-up", 1), other)
        for index, clients in enumerate(levels):
            count = chats[clients]
            turns = [
                ours_runs(s, clients, count, tokens, sampled=clients == sampled_level),
                thread_runs(s, clients, count, tokens),
                transformers_runs(s, clients, count, tokens),
            ]
            for turn in turns if index % 2 == 0 else reversed(turns):
                for level, health_url, client in turn:
                    results.append(await run_level(level, health_url, client, clients))
    return results


def in_order(levels: list[Level]) -> list[Level]:
    """Sorted by server (in the order of SERVERS), then by concurrency."""
    return sorted(levels, key=lambda level: (SERVERS.index(level.server), level.concurrency))


def sampling_cost(levels: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sampled level's tokens/s as a fraction of greedy /ws's at the same concurrency."""
    sampled = next((lv for lv in levels if lv["server"] == SAMPLED), None)
    greedy = sampled and next(
        (
            lv
            for lv in levels
            if lv["server"] == "qwen-chat /ws" and lv["concurrency"] == sampled["concurrency"]
        ),
        None,
    )
    if sampled and greedy and greedy["tokens_per_second"]:
        return {
            "clients": sampled["concurrency"],
            "ratio": round(sampled["tokens_per_second"] / greedy["tokens_per_second"], 3),
        }
    return None
