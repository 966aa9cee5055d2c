"""Many users on one pod, and many pods behind a router: `qwen-chat serve` as the container runs it.

- One key cannot starve the others: past MAX_USER_CONNECTIONS its sockets close with 1013, past
  MAX_USER_REQUESTS its chats get `rate_limited`, and another user's chat starts at once.
- The endpoint picker's gauges (`vllm:*`, docs/scale-out.md) follow the queue and the KV cache.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.live_server import wait_until
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.wsclient import open_socket, receive, until_end

pytestmark = pytest.mark.anyio

# Greedy, so the tiny model's reply runs to max_new_tokens instead of ending early; long enough that no
# reply ends before the test has sent every chat.
LONG = {"max_new_tokens": 400, "temperature": 0}


def gauges(server: ServeProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every vllm:* series and the qwen_chat_ gauges they mirror, from one scrape."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(server.metrics_text()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def one(scrape: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    (sample,) = scrape[name]
    return sample[1]


async def test_one_key_with_40_sockets_leaves_another_user_answered_at_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = {"max_running": "4", "max_waiting": "8"}  # MAX_USER_REQUESTS 0: half of 4
    with serve_process(tmp_path, tiny_model_dir, workers=1, **settings) as server:
        server.wait_ready()
        async with AsyncExitStack() as stack:
            sockets = [
                await stack.enter_async_context(open_socket(server.ws, user="alice")) for _ in range(40)
            ]
            # Opened one after another on one worker: the first 16 (MAX_USER_CONNECTIONS by default) stay open,
            # every later one is accepted, then closed at once with 1013.
            flood, closed = sockets[:16], sockets[16:]
            await asyncio.wait_for(asyncio.gather(*(ws.wait_closed() for ws in closed)), 30)
            assert all(ws.close_code is None for ws in flood)
            assert {ws.close_code for ws in closed} == {1013}
            assert all("open connections" in (ws.close_reason or "") for ws in closed)

            for ws in flood:
                await ws.send(json.dumps({"type": "chat", "content": "a long story", "params": LONG}))
            firsts = [await receive(ws) for ws in flood]
            flood_began = time.monotonic()
            started = [ws for ws, frame in zip(flood, firsts, strict=True) if frame["type"] == "start"]
            refused = [frame for frame in firsts if frame["type"] == "error"]
            assert len(started) == 2, "half of MAX_RUNNING for one key"
            assert len(refused) == 14
            assert {frame["code"] for frame in refused} == {"rate_limited"}
            assert all(frame["retry_after"] >= 1 for frame in refused)
            assert "replies running or waiting" in refused[0]["message"]

            bob = await stack.enter_async_context(open_socket(server.ws, user="bob"))

            async def bobs_reply() -> tuple[list[dict[str, Any]], float]:
                asked = time.monotonic()
                await bob.send(json.dumps({"type": "chat", "content": "a long story", "params": LONG}))
                return await until_end(bob, timeout=120), time.monotonic() - asked

            async def flood_reply(ws: Any) -> float:
                assert (await until_end(ws, timeout=120))[-1]["type"] == "done"
                return time.monotonic() - flood_began  # from its start frame to its done

            (frames, bob_seconds), *flood_seconds = await asyncio.gather(
                bobs_reply(), *(flood_reply(ws) for ws in started)
            )
            assert frames[0] == {"type": "start", "id": None, "queue_position": 0}, frames[0]
            assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "length"
            # Bob's reply, as long as a flood reply, takes about as long as one: it waited for none of them
            # (waiting for one would make it about twice as long).
            assert bob_seconds < 1.5 * max(flood_seconds), (bob_seconds, flood_seconds)

            # The flood's refused chats count as rate limited, on the dashboard's series, and the refusals
            # by reason tell the per-user caps from the rate limit.
            limited = server.metric("qwen_chat_requests_total", transport="ws", outcome="rate_limited")
            assert limited == 14
            refusals = {
                reason: server.metric("qwen_chat_refusals_total", transport="ws", reason=reason)
                for reason in ("user_requests", "user_connections", "rate_limited")
            }
            assert refusals == {"user_requests": 14, "user_connections": 24, "rate_limited": 0}


async def test_the_endpoint_pickers_gauges_follow_the_queue_and_the_kv_cache(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = {
        "max_running": "2",
        "max_waiting": "8",
        "max_user_requests": "8",
        "max_input_tokens": "256",
        # Long replies in a small cache: two fill a visible share of it for seconds (at 650 tokens/s, 500-token
        # replies were over before a poll under a full test run's load saw the share).
        "max_new_tokens": "2000",
        "kv_cache_tokens": "4096",
    }
    with serve_process(tmp_path, tiny_model_dir, workers=1, **settings) as server:
        server.wait_ready()
        fresh = gauges(server)
        assert one(fresh, "vllm:num_requests_waiting") == 0
        assert one(fresh, "vllm:num_requests_running") == 0
        assert one(fresh, "vllm:kv_cache_usage_perc") == 0
        ((info, value),) = fresh["vllm:cache_config_info"]
        model = info["model_name"]
        assert value == 1 and info["block_size"] == "32"
        assert int(info["num_gpu_blocks"]) == one(fresh, "qwen_chat_kv_cache_pages") > 0
        async with AsyncExitStack() as stack:
            sockets = [await stack.enter_async_context(open_socket(server.ws)) for _ in range(5)]
            params = {"max_new_tokens": 2000, "temperature": 0}
            for ws in sockets:
                await ws.send(json.dumps({"type": "chat", "content": "a long story", "params": params}))
            positions = [(await receive(ws))["queue_position"] for ws in sockets]
            assert sorted(positions) == [0, 0, 1, 2, 3]
            seen: dict[str, Any] = {}

            def loaded() -> bool:
                seen.update(gauges(server))
                return one(seen, "vllm:kv_cache_usage_perc") > 0.2

            wait_until(loaded, timeout=60, interval=0.05)
            assert one(seen, "vllm:num_requests_running") == 2 == one(seen, "qwen_chat_requests_running")
            assert one(seen, "vllm:num_requests_waiting") == 3 == one(seen, "qwen_chat_requests_waiting")
            assert seen["vllm:num_requests_waiting"][0][0] == {"model_name": model}
            assert one(seen, "vllm:kv_cache_usage_perc") == one(seen, "qwen_chat_kv_cache_usage_ratio") <= 1
        # The clients went away: their replies stop, and the pod looks idle to the picker again.

        def idle() -> bool:
            seen.update(gauges(server))
            return (
                one(seen, "vllm:num_requests_running") == 0
                and one(seen, "vllm:num_requests_waiting") == 0
                and one(seen, "vllm:kv_cache_usage_perc") < 0.05
            )

        try:
            wait_until(idle, timeout=30, interval=0.2)
        except TimeoutError:
            raise AssertionError({k: v for k, v in seen.items() if k.startswith("vllm:")}) from None
