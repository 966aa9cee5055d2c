"""`qwen-chat serve` as the container runs it: a gunicorn master, two uvicorn workers, the tiny model.

Readiness across workers, multiprocess metrics, JSON logs, a worker or its engine process killed mid-stream,
drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.live_server import wait_until
from tests.support.secret_volume import KEYS
from tests.support.serve_process import ServeProcess, open_on_every_worker, serve_process
from tests.support.stream_clients import ERRORED, http_stream, sdk_chat
from tests.support.wsclient import chat, open_socket, receive, reply_text, until_end

pytestmark = pytest.mark.anyio

ALL_KEYS = list(KEYS.values())


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path) -> Any:
    with serve_process(tmp_path, tiny_model_dir, workers=2) as live:
        live.wait_ready()
        yield live
    live.assert_clean_logs(ALL_KEYS)


async def test_readyz_is_503_until_both_workers_are_warm_then_200_from_all(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with serve_process(tmp_path, tiny_model_dir, workers=2) as live:
        seen: list[tuple[int, dict[str, Any]]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, body = live.readyz()
            if status:
                seen.append((status, body))
            if status == 200:
                break
            await asyncio.sleep(0.02)
        assert seen and seen[-1][0] == 200, seen[-3:]
        not_ready = [body for status, body in seen if status == 503]
        assert not_ready, "readiness must be 503 while the workers load"
        assert all(body["status"] == "loading" and body["workers"] == 2 for body in not_ready)
        assert all(body["workers_ready"] < 2 for body in not_ready)
        # Each request on a fresh connection: whichever worker answers says the same.
        answers = [httpx.get(live.http + "/readyz", headers={"Connection": "close"}) for _ in range(20)]
        assert {r.status_code for r in answers} == {200}
        assert {json.dumps(r.json()) for r in answers} == {
            '{"status": "ready", "workers_ready": 2, "workers": 2}'
        }
        assert httpx.get(live.http + "/livez").status_code == 200
        # A worker only tokenizes: torch is loaded by its engine process alone.
        for worker in live.workers():
            engine = live.engine_of(worker)
            assert engine is not None
            assert not _maps_torch(worker), "a worker loaded torch"
            assert _maps_torch(engine)
    live.assert_clean_logs(ALL_KEYS)


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


async def test_active_connections_is_the_sum_over_workers(server: ServeProcess) -> None:
    async with AsyncExitStack() as stack:
        held = await open_on_every_worker(stack, server, per_worker=3)
        total = sum(len(sockets) for sockets in held.values())
        assert total >= 6
        assert server.metric("qwen_chat_active_connections", transport="ws") == total
    wait_until(lambda: server.metric("qwen_chat_active_connections", transport="ws") == 0, timeout=10)


async def test_generation_tokens_total_counts_exactly_what_clients_received(server: ServeProcess) -> None:
    before = server.metric("qwen_chat_generation_tokens_total") or 0.0
    requests_before = server.metric("qwen_chat_requests_total") or 0.0
    received = 0
    outcomes: list[str] = []
    async with AsyncExitStack() as stack:
        held = await open_on_every_worker(stack, server, per_worker=1)
        # One socket per worker: a busy worker can leave the kernel to hand one worker many more, and
        # three chats on each of them would run into alice's rate limit.
        for index, ws in enumerate(sockets[0] for sockets in held.values()):
            for max_new in (7, 19, 33 + index):
                done = (await chat(ws, f"count {max_new}", params={"max_new_tokens": max_new}))[-1]
                received += done["usage"]["completion_tokens"]
                outcomes.append(done["finish_reason"])
        # A cancelled reply counts the tokens that were sent, and a refused frame counts as a request.
        ws = next(iter(held.values()))[0]
        await ws.send(json.dumps({"type": "chat", "content": "long", "params": {"max_new_tokens": 500}}))
        await receive(ws)
        await receive(ws)
        await ws.send(json.dumps({"type": "cancel"}))
        cancelled = (await until_end(ws))[-1]
        assert cancelled["finish_reason"] == "cancelled"
        received += cancelled["usage"]["completion_tokens"]
        await ws.send('{"type": "nonsense"}')
        assert (await receive(ws))["code"] == "bad_request"
    assert server.metric("qwen_chat_generation_tokens_total") == before + received
    assert server.metric("qwen_chat_requests_total") == requests_before + len(outcomes) + 2
    assert (server.metric("qwen_chat_requests_total", outcome="cancelled") or 0) >= 1
    assert (server.metric("qwen_chat_requests_total", outcome="rejected") or 0) >= 1
    assert (server.metric("qwen_chat_time_to_first_token_seconds_count") or 0) >= len(outcomes)
    assert (server.metric("qwen_chat_generation_tokens_per_second_count") or 0) >= len(outcomes)
    assert server.metric("qwen_chat_requests_running") == 0
    assert server.metric("qwen_chat_requests_waiting") == 0


async def test_metrics_pass_promtool_and_auth_failures_are_counted(server: ServeProcess) -> None:
    for headers in ({"Authorization": "Bearer wrong-key"}, {}):
        with pytest.raises(InvalidStatus):
            async with open_socket(server.ws, user=None, additional_headers=headers):
                pass
    gaps_before = server.metric("qwen_chat_inter_token_latency_seconds_count") or 0
    gaps = 0
    async with open_socket(server.ws) as ws:
        # Inter-token latency is one gap per token message after the first (deltas that pile up leave
        # as one message), so a reply needs two messages to record one; the random model's reply may
        # end early or arrive in one message, hence a few tries.
        for content in ("hi", "tell me more", "and then?"):
            frames = await chat(ws, content, params={"max_new_tokens": 24})
            gaps += max(0, sum(f["type"] == "token" for f in frames) - 1)
            if gaps:
                break
    assert gaps, "no reply came in two token messages"
    assert server.metric("qwen_chat_inter_token_latency_seconds_count") == gaps_before + gaps
    assert (server.metric("qwen_chat_auth_failures_total", transport="ws", reason="key") or 0) == 2
    text = server.metrics_text()
    for name in (
        "generation_tokens_total",
        "prompt_tokens_total",
        "generation_tokens_per_second",
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "request_duration_seconds",
        "request_queue_seconds",
        "active_connections",
        "requests_running",
        "requests_waiting",
        "requests_total",
        "auth_failures_total",
        "model_loaded",
        "model_load_seconds",
        "kv_cache_usage_ratio",
        "kv_cache_pages",
        "kv_cache_page_size_tokens",
    ):
        assert f"# TYPE qwen_chat_{name} " in text, name
    # The batch engine's cache, over both workers: its size in pages and the share in use.
    assert (server.metric("qwen_chat_kv_cache_pages") or 0) > 0
    assert server.metric("qwen_chat_kv_cache_page_size_tokens") == 32
    usage = server.metric("qwen_chat_kv_cache_usage_ratio")
    assert usage is not None and 0 <= usage < 1
    loaded = server.metric("qwen_chat_model_loaded")
    assert loaded == 2, "one per warmed worker"
    # What each worker's engine runs with: on CPU our own attention, and none of transformers' fast paths.
    off = {"device": "cpu", "cuda_graphs": "false", "async_batching": "false", "decode_kernel": "false"}
    assert server.metric("qwen_chat_engine_info", **off) == 2, text
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (.ci/run installs it)"
    # The endpoint picker's vllm:* names break one of promtool's naming rules, the colon, which the picker's
    # default mapping dictates (docs/scale-out.md): ours must pass every rule, theirs every rule but that one.
    ours = "\n".join(line for line in text.splitlines() if "vllm:" not in line) + "\n"
    theirs = "\n".join(line for line in text.splitlines() if "vllm:" in line) + "\n"
    check = subprocess.run(  # noqa: ASYNC221
        [promtool, "check", "metrics"], input=ours, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    check = subprocess.run(  # noqa: ASYNC221
        [promtool, "check", "metrics"], input=theirs, capture_output=True, text=True, timeout=30
    )
    complaints = {line.split(" ", 1)[1] for line in (check.stdout + check.stderr).splitlines() if line}
    assert complaints == {"metric names should not contain ':'"}, check.stdout + check.stderr
    assert theirs.count("# TYPE vllm:") == 6
    # What the picker reads of this two-worker pod: the same figures as ours, the cache's pages summed.
    assert server.metric("vllm:kv_cache_usage_perc") == usage
    # The prefix cache's counters, summed over the workers: every chat above looked its prompt up.
    for counter in ("queries", "hits"):
        summed = server.metric(f"qwen_chat_prefix_cache_{counter}_total")
        assert summed is not None and server.metric(f"vllm:prefix_cache_{counter}_total") == summed
    assert (server.metric("qwen_chat_prefix_cache_queries_total") or 0) > 0
    assert server.metric("vllm:num_requests_running") == server.metric("qwen_chat_requests_running") == 0
    info = next(
        s for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("vllm:cache")
    )
    assert int(info.labels["num_gpu_blocks"]) == server.metric("qwen_chat_kv_cache_pages")
    assert info.labels["block_size"] == "32"


AUTH = {"Authorization": f"Bearer {KEYS['alice']}"}
LONG_SSE_BODY = {"prompt": "long", "max_new_tokens": 1500, "temperature": 0}


async def _sse_finish_reason(lines: Any) -> str:
    """Read a /chat_stream to its `done` event and return its finish_reason."""
    event = ""
    async for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "done":
            return str(json.loads(line.removeprefix("data: "))["finish_reason"])
    raise AssertionError("the stream ended without a done event")


async def _stream_until_first_token(ws: ClientConnection, max_new_tokens: int = 512) -> None:
    """Start a reply and wait until it streams."""
    # Greedy, so the reply is the same every run and never ends early on an end-of-turn token.
    params = {"max_new_tokens": max_new_tokens, "temperature": 0}
    await ws.send(json.dumps({"type": "chat", "content": "a long story", "params": params}))
    assert (await receive(ws))["type"] == "start"
    assert (await receive(ws))["type"] == "token"


async def test_sigkill_of_a_worker_mid_stream(server: ServeProcess) -> None:
    async with AsyncExitStack() as stack:
        held = await open_on_every_worker(stack, server, per_worker=1)
        (victim, (doomed, *_)), (survivor, (steady, *_)) = held.items()
        orphan = server.engine_of(victim)
        assert orphan is not None, "each worker runs its engine in a child process"
        await _stream_until_first_token(steady)
        await _stream_until_first_token(doomed)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        with pytest.raises(ConnectionClosed):
            while True:
                await receive(doomed, timeout=5)
        assert time.monotonic() - killed_at < 2, "the killed worker's client must see the close promptly"
        # Its engine process notices that its worker is gone and exits: nothing holds the model's memory.
        wait_until(lambda: not _alive(orphan), timeout=10, interval=0.05)
        # Until the replacement has loaded and warmed the model, the pod is not ready.
        wait_until(lambda: server.readyz()[0] == 503, timeout=5, interval=0.02)
        # The other worker's stream is untouched.
        frames = await until_end(steady)
        assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "length"
        # gunicorn replaces the worker; the pod is not ready until the new one is warm.
        wait_until(lambda: len(server.workers()) == 2 and victim not in server.workers(), timeout=30)
        server.wait_ready(timeout=120)
        assert survivor in server.workers()
        text = server.metrics_text()
        assert f'pid="{victim}"' not in text, "the dead worker's live gauges must leave /metrics"
        # Only the survivor's sockets are still open (it may hold more than one).
        assert server.metric("qwen_chat_active_connections", transport="ws") == len(held[survivor])
        assert server.metric("qwen_chat_model_loaded") == 2
        assert server.metric("qwen_chat_worker_exits_total") == 1, "the dashboard's restart panel counts it"
        assert (await chat(steady, "still here", params={"max_new_tokens": 3}))[-1]["type"] == "done"


async def test_sigkill_of_an_engine_process_mid_stream(server: ServeProcess) -> None:
    async with AsyncExitStack() as stack:
        held = await open_on_every_worker(stack, server, per_worker=1)
        (worker, (doomed, *_)), (_, (steady, *_)) = held.items()
        victim = server.engine_of(worker)
        assert victim is not None
        await _stream_until_first_token(steady)
        await _stream_until_first_token(doomed)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        frames = await until_end(doomed, timeout=10)
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "internal", frames[-1]
        assert time.monotonic() - killed_at < 3, "a dead engine's clients must hear of it promptly"
        # That worker restarts its engine; until it is warm the pod is not ready, and says why.
        wait_until(lambda: server.readyz()[0] == 503, timeout=5, interval=0.02)
        status, body = server.readyz()
        assert status == 503 and body["status"] == "loading" and "SIGKILL" in body["reason"], body
        # The other worker's stream is untouched.
        done = (await until_end(steady))[-1]
        assert done["type"] == "done" and done["finish_reason"] == "length"
        server.wait_ready(timeout=120)
        assert worker in server.workers(), "the worker survives its engine"
        assert server.engine_of(worker) not in (None, victim)
        # The client's socket stayed open: it chats on with the new engine.
        assert (await chat(doomed, "still here", params={"max_new_tokens": 3}))[-1]["type"] == "done"
        assert server.metric("qwen_chat_engine_restarts_total") == 1
        assert server.metric("qwen_chat_model_loaded") == 2


async def test_sigkill_of_the_engines_ends_every_http_stream_with_an_error_the_client_reads(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Streams on both workers, both engines killed mid-reply: every `/v1` body ends with OpenAI's error
    object then `[DONE]` (the SDK raises `APIError` with the reason, never a bare connection error), every
    `/chat_stream` with its `error` event; each cut reply is counted once as `error`."""
    # One key holds all 12 replies, which the kernel may give to one worker: the cap per key is raised.
    settings = {"max_new_tokens": "4000", "max_user_requests": "16"}
    with serve_process(tmp_path, tiny_model_dir, workers=2, **settings) as live:
        live.wait_ready()
        model = httpx.get(live.http + "/v1/models", headers=AUTH).json()["data"][0]["id"]
        greedy = {"model": model, "max_tokens": 4000, "temperature": 0}
        chat_request = {**greedy, "messages": [{"role": "user", "content": "a long story"}]}
        requests = {
            "/v1/chat/completions": {**chat_request, "stream": True},
            "/v1/completions": {**greedy, "prompt": "Once upon a time", "stream": True},
            "/chat_stream": {**LONG_SSE_BODY, "max_new_tokens": 4000},
        }
        errors_before = {
            t: live.metric("qwen_chat_requests_total", transport=t, outcome="error") or 0
            for t in ("openai", "sse")
        }
        async with (
            httpx.AsyncClient(base_url=live.http, timeout=60) as http,
            openai.AsyncOpenAI(base_url=live.http + "/v1", api_key=KEYS["alice"]) as sdk,
        ):
            streaming: list[asyncio.Event] = []
            clients = []
            for _ in range(3):  # for each kind: 3 raw bodies; 3 chats through the SDK, its default retries on
                for path, body in requests.items():
                    streaming.append(asyncio.Event())
                    clients.append(http_stream(http, path, body, AUTH, streaming[-1]))
                streaming.append(asyncio.Event())
                clients.append(sdk_chat(sdk, streaming[-1], **chat_request))
            tasks = [asyncio.ensure_future(client) for client in clients]
            await asyncio.to_thread(
                wait_until,
                lambda: all(e.is_set() for e in streaming) or any(t.done() for t in tasks),
                timeout=60,
                interval=0.05,
            )
            early = [task.result() for task in tasks if task.done()]
            assert all(event.is_set() for event in streaming) and not early, f"not all streaming: {early}"
            engines = [live.engine_of(worker) for worker in live.workers()]
            assert None not in engines and len(engines) == 2
            for pid in engines:
                os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
            endings = await asyncio.gather(*tasks)
        kinds = [*requests, "sdk"] * 3
        failed = {
            "message": "the model failed to generate a reply",
            "type": "server_error",
            "param": None,
            "code": "internal",
        }
        for kind, ending in zip(kinds, endings, strict=True):
            assert ending.how == ERRORED and ending.tokens > 0, (kind, ending)
            if kind == "/chat_stream":
                assert ending.detail == {"message": failed["message"], "code": "internal"}
            elif kind == "sdk":
                assert ending.detail == {"exception": "APIError", **failed}, ending
            else:
                assert ending.detail == failed, (kind, ending)
        errors = {
            t: (live.metric("qwen_chat_requests_total", transport=t, outcome="error") or 0) - errors_before[t]
            for t in ("openai", "sse")
        }
        assert errors == {"openai": 9, "sse": 3}, "each cut reply is counted once, as an error"
        # Both workers serve again once their engines are back.
        live.wait_ready(timeout=120)
        assert (
            await asyncio.to_thread(
                httpx.post,
                live.http + "/chat",
                json={"prompt": "hi", "max_new_tokens": 2},
                headers=AUTH,
                timeout=30,
            )
        ).status_code == 200
    live.assert_clean_logs(ALL_KEYS)


async def test_a_consumer_that_stops_reading_does_not_stall_other_streams(server: ServeProcess) -> None:
    async with AsyncExitStack() as stack:
        # A client that reads nothing: its frames pile up in its socket and in the server's send buffer.
        slow = await stack.enter_async_context(open_socket(server.ws, max_queue=1))
        worker = server.worker_of(slow.local_address[1])
        fast = None
        for _ in range(20):  # a second socket on the same worker (the kernel picks it)
            candidate = await stack.enter_async_context(open_socket(server.ws))
            if server.worker_of(candidate.local_address[1]) == worker:
                fast = candidate
                break
        assert fast is not None, "no second socket landed on the slow client's worker"
        params = {"max_new_tokens": 512, "temperature": 0}  # the server's cap
        await slow.send(json.dumps({"type": "chat", "content": "a very long story", "params": params}))
        started = time.monotonic()
        for index in range(3):
            frames = await chat(fast, f"quick one {index}", params={"max_new_tokens": 64})
            assert frames[-1]["type"] == "done" and frames[-1]["usage"]["completion_tokens"] == 64
        assert time.monotonic() - started < 30, (
            "the other stream on that worker must not wait for the slow one"
        )
        # Nothing of the slow reply was lost: once it reads again it gets all of it, the same reply (greedy)
        # as a client that reads at once.
        frames = await until_end(slow, timeout=120)
        assert frames[-1]["type"] == "done", frames[-1]
        fresh = await stack.enter_async_context(open_socket(server.ws))  # no history, like `slow`
        again = await chat(fresh, "a very long story", params=params)
        assert reply_text(frames) == reply_text(again) and reply_text(frames)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_sigterm_drains_in_flight_replies_then_exits_zero(tmp_path: Path, tiny_model_dir: Path) -> None:
    drain_seconds = 40
    settings = {"drain_seconds": str(drain_seconds), "max_new_tokens": "1500"}
    with serve_process(tmp_path, tiny_model_dir, workers=2, **settings) as live:
        live.wait_ready()
        async with AsyncExitStack() as stack:
            held = await open_on_every_worker(stack, live, per_worker=1)
            streams = [sockets[0] for sockets in held.values()]
            engines = [live.engine_of(worker) for worker in held]
            assert None not in engines
            # Long replies (several seconds here), so that the checks below happen while they stream.
            for ws in streams:
                await _stream_until_first_token(ws, max_new_tokens=1500)
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=live.http, timeout=60))
            sse = await stack.enter_async_context(
                http.stream("POST", "/chat_stream", headers=AUTH, json=LONG_SSE_BODY)
            )
            sse_lines = sse.aiter_lines()
            assert (await anext(sse_lines)).startswith("data: ")
            live.proc.send_signal(signal.SIGTERM)
            terminated_at = time.monotonic()
            await asyncio.sleep(0.2)
            status, body = live.readyz()
            assert status == 503 and body["status"] == "draining"
            with pytest.raises(InvalidStatus) as refused:
                async with open_socket(live.ws):
                    pass
            assert refused.value.response.status_code == 503
            assert "Retry-After" in refused.value.response.headers
            for ws in streams:
                frames = await until_end(ws)
                assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "length"
            # HTTP streams finish too.
            assert await _sse_finish_reason(sse_lines) == "length"
            for ws in streams:
                with pytest.raises(ConnectionClosed) as closed:
                    await receive(ws, timeout=drain_seconds)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        code = await asyncio.to_thread(live.proc.wait, drain_seconds + 15)
        assert code == 0
        assert time.monotonic() - terminated_at < drain_seconds + 15
        assert not [pid for pid in engines if pid is not None and _alive(pid)], "engine processes outlived it"
    live.assert_clean_logs(ALL_KEYS)


async def test_sigterm_cancels_replies_that_outlast_the_drain(tmp_path: Path, tiny_model_dir: Path) -> None:
    with serve_process(
        tmp_path, tiny_model_dir, workers=1, drain_seconds="0.3", max_new_tokens="4000"
    ) as live:
        live.wait_ready()
        async with open_socket(live.ws) as ws, httpx.AsyncClient(base_url=live.http, timeout=60) as http:
            await _stream_until_first_token(ws, max_new_tokens=4000)
            body = {**LONG_SSE_BODY, "max_new_tokens": 4000}
            model = (await http.get("/v1/models", headers=AUTH)).json()["data"][0]["id"]
            messages = [{"role": "user", "content": "a long story"}]
            v1_body = {
                "model": model,
                "messages": messages,
                "max_tokens": 4000,
                "temperature": 0,
                "stream": True,
            }
            v1_streaming = asyncio.Event()
            v1 = asyncio.ensure_future(http_stream(http, "/v1/chat/completions", v1_body, AUTH, v1_streaming))
            async with http.stream("POST", "/chat_stream", headers=AUTH, json=body) as sse:
                sse_lines = sse.aiter_lines()
                await anext(sse_lines)
                await asyncio.wait_for(v1_streaming.wait(), 30)
                live.proc.send_signal(signal.SIGTERM)
                frames = await until_end(ws)
                assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "cancelled"
                assert await _sse_finish_reason(sse_lines) == "cancelled"
            # OpenAI has no `cancelled`: a `/v1` reply cut short says so with an error, not a false `stop`.
            ending = await v1
            overloaded = {
                "message": "the server is shutting down",
                "type": "server_error",
                "code": "overloaded",
            }
            assert ending.how == ERRORED and ending.detail == {**overloaded, "param": None}, ending
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws, timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert await asyncio.to_thread(live.proc.wait, 30) == 0
