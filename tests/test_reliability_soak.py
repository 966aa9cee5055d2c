"""Soak: 64 concurrent WebSocket clients, 10 chats each, against a real 2-worker `qwen-chat serve`.

Every chat must end in `done` or an explicit `overloaded`/`rate_limited` error within its deadline: none
lost, none hung. Afterwards the live gauges are back to 0, no worker was replaced, and worker memory grew
by less than 10% over a warmed-up baseline. Figures: test-output/reliability/soak.json.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.support.live_server import wait_until
from tests.support.reliability_tools import (
    FINISH_REASONS,
    Figures,
    error_log_lines,
    leaked_secrets,
    secrets_of,
    worker_rss,
)
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.wsclient import open_socket, receive

pytestmark = pytest.mark.anyio

CLIENTS = 64
CHATS = 10
WARMUP_CHATS = 2
MAX_NEW_TOKENS = 8
CHAT_DEADLINE = 60.0  # seconds from sending a chat to its `done` or error
ALLOWED_REFUSALS = {"overloaded", "rate_limited"}
MEMORY_GROWTH_LIMIT = 0.10


class ChatFailed(Exception):
    """A chat that ended any other way than `done` or an allowed refusal."""


def chat_frame(client: int, turn: int) -> tuple[str, str | None]:
    """The frame a client sends for one turn, and the id replies must carry: a mix of the protocol's
    forms (a turn of the connection's conversation, a stateless conversation, a seed-style plain text)."""
    mid = f"c{client}-t{turn}"
    params = {"max_new_tokens": MAX_NEW_TOKENS}
    if turn % 5 == 3:
        return f"plain text turn {turn} from client {client}", None
    if turn % 5 == 4:
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": f"stateless turn {turn}"},
        ]
        return json.dumps({"type": "chat", "id": mid, "messages": messages, "params": params}), mid
    return json.dumps(
        {"type": "chat", "id": mid, "content": f"turn {turn} of {client}", "params": params}
    ), mid


async def one_chat(ws: ClientConnection, frame: str, mid: str | None) -> str:
    """Send one chat and read it to its end; returns `done` or the refusal's code."""
    await ws.send(frame)
    first = await receive(ws, CHAT_DEADLINE)
    if first["type"] == "error":
        if first["code"] in ALLOWED_REFUSALS and first["id"] == mid and first.get("retry_after", 0) > 0:
            return str(first["code"])
        raise ChatFailed(f"refused: {first}")
    if first != {"type": "start", "id": mid, "queue_position": first.get("queue_position")}:
        raise ChatFailed(f"expected start, got {first}")
    tokens = 0
    while True:
        frame_in = await receive(ws, CHAT_DEADLINE)
        if frame_in["type"] == "token" and frame_in["id"] == mid and isinstance(frame_in["text"], str):
            tokens += 1
            continue
        if frame_in["type"] == "done" and frame_in["id"] == mid:
            usage = frame_in["usage"]
            if frame_in["finish_reason"] not in FINISH_REASONS or not 0 < usage["completion_tokens"] <= (
                MAX_NEW_TOKENS
            ):
                raise ChatFailed(f"bad done: {frame_in}")
            return "done"
        raise ChatFailed(f"unexpected frame mid-reply: {frame_in}")


async def run_client(
    server: ServeProcess, client: int, chats: int, outcomes: Counter[str], failures: list[str]
) -> list[float]:
    """One client: `chats` turns on one connection. Returns each chat's duration."""
    user = ("alice", "bob")[client % 2]
    durations = []
    async with open_socket(server.ws, user=user) as ws:
        # Which worker the kernel gave the connection: each has its own MAX_RUNNING + MAX_WAITING.
        outcomes[f"connections on worker {server.worker_of(ws.local_address[1])}"] += 1
        for turn in range(chats):
            frame, mid = chat_frame(client, turn)
            started = time.monotonic()
            try:
                outcome = await asyncio.wait_for(one_chat(ws, frame, mid), CHAT_DEADLINE)
            except TimeoutError:
                outcomes["hung"] += 1
                return durations
            except ConnectionClosed:
                outcomes["lost"] += 1
                return durations
            except ChatFailed as exc:
                outcomes["failed"] += 1
                failures.append(str(exc))
                continue
            durations.append(time.monotonic() - started)
            outcomes[outcome] += 1
    return durations


async def run_round(server: ServeProcess, chats: int) -> tuple[Counter[str], list[str], list[float]]:
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    results = await asyncio.gather(
        *(run_client(server, c, chats, outcomes, failures) for c in range(CLIENTS))
    )
    return outcomes, failures, [d for durations in results for d in durations]


def settled(server: ServeProcess) -> bool:
    return all(
        server.metric(name, **labels) == 0
        for name, labels in (
            ("qwen_chat_active_connections", {"transport": "ws"}),
            ("qwen_chat_requests_running", {}),
            ("qwen_chat_requests_waiting", {}),
        )
    )


@pytest.fixture
def soak_server(tmp_path: Path, tiny_model_dir: Path) -> Any:
    # Two users share the clients; the per-user limits (chats per minute, replies and sockets at once) are
    # above what 64 clients of 12 chats in about a minute need, so refusals here would be real overload,
    # which the test counts (and allows); fairness between users has its own test (test_many_users.py).
    # MAX_NEW_TOKENS is also the server's default, for the plain-text frames, which carry no params.
    settings = {
        "max_new_tokens": str(MAX_NEW_TOKENS),
        "rate_limit": "2000/minute",
        "max_user_requests": "64",
        "max_user_connections": "64",
    }
    with serve_process(tmp_path, tiny_model_dir, workers=2, **settings) as live:
        live.wait_ready()
        yield live


async def test_soak_64_clients_10_chats_each_on_2_workers(soak_server: ServeProcess) -> None:
    server = soak_server
    figures = Figures("soak")
    workers = server.workers()
    assert len(workers) == 2

    warm_outcomes, warm_failures, _ = await run_round(server, WARMUP_CHATS)
    await asyncio.to_thread(wait_until, lambda: settled(server), 30, 0.2)
    baseline = worker_rss(workers)

    started = time.monotonic()
    outcomes, failures, durations = await run_round(server, CHATS)
    soak_seconds = time.monotonic() - started
    await asyncio.to_thread(wait_until, lambda: settled(server), 30, 0.2)
    after = worker_rss(workers)

    growth = {pid: (after[pid] - baseline[pid]) / baseline[pid] for pid in workers}
    durations.sort()
    figures.set(
        clients=CLIENTS,
        chats_per_client=CHATS,
        chats=CLIENTS * CHATS,
        warmup_chats=CLIENTS * WARMUP_CHATS,
        workers=2,
        max_new_tokens=MAX_NEW_TOKENS,
        soak_seconds=round(soak_seconds, 1),
        chats_per_second=round(CLIENTS * CHATS / soak_seconds, 1),
        chat_seconds_p50=round(durations[len(durations) // 2], 3) if durations else None,
        chat_seconds_max=round(durations[-1], 3) if durations else None,
        rss_mib_before={pid: round(rss / 2**20, 1) for pid, rss in baseline.items()},
        rss_mib_after={pid: round(rss / 2**20, 1) for pid, rss in after.items()},
        rss_growth_percent={pid: round(100 * g, 2) for pid, g in growth.items()},
        warmup_outcomes=dict(warm_outcomes),
    )
    figures.counts.update(outcomes)
    figures.write()

    ended = outcomes["done"] + sum(outcomes[code] for code in ALLOWED_REFUSALS)
    assert outcomes["hung"] == outcomes["lost"] == outcomes["failed"] == 0, dict(outcomes)
    assert ended == CLIENTS * CHATS, (
        f"every chat ends in done or an explicit refusal: {dict(outcomes)}, {failures[:3]}"
    )
    assert outcomes["done"] > 0
    assert warm_outcomes["hung"] == warm_outcomes["lost"] == warm_outcomes["failed"] == 0, (
        dict(warm_outcomes),
        warm_failures[:3],
    )
    assert server.workers() == workers, "no worker crashed or was replaced"
    assert all(g < MEMORY_GROWTH_LIMIT for g in growth.values()), f"worker memory grew: {growth}"
    # Counted on the server side too: every chat of both rounds, whatever its outcome.
    total = server.metric("qwen_chat_requests_total", transport="ws")
    assert total == CLIENTS * (CHATS + WARMUP_CHATS)

    log = server.log.read_text()
    assert not error_log_lines(log), error_log_lines(log)[:5]
    assert not leaked_secrets({"log": log, "metrics": server.metrics_text()}, secrets_of())
