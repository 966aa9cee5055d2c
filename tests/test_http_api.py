"""The HTTP APIs against a real server with the tiny model: the official `openai` SDK, the seeds' /chat and
/chat_stream, rate limits (per process, across workers, across servers through redis) and overload."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, AsyncExitStack, ExitStack
from pathlib import Path

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.support.live_server import LiveServer, free_port, run_server, wait_until
from tests.support.secret_volume import KEYS
from tests.support.serve_process import open_on_every_worker, serve_process
from tests.support.wsclient import chat, open_socket

Serve = Callable[..., AbstractContextManager[LiveServer]]
AUTH = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}


def client(server: LiveServer, key: str = KEYS["alice"]) -> OpenAI:
    return OpenAI(base_url=server.http + "/v1", api_key=key, max_retries=0, timeout=60)


def model_name(server: LiveServer) -> str:
    with client(server) as sdk:
        return sdk.models.list().data[0].id


def test_openai_sdk_sync_plain_and_streaming(server: LiveServer) -> None:
    model = model_name(server)
    with client(server) as sdk:
        _sync_plain_and_streaming(sdk, model)


def _sync_plain_and_streaming(sdk: OpenAI, model: str) -> None:
    assert model == "tiny-model" or model.startswith("tiny-model")
    plain = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=12, temperature=0
    )
    assert plain.object == "chat.completion" and plain.model == model
    assert plain.choices[0].finish_reason == "length"
    assert plain.choices[0].message.role == "assistant" and plain.choices[0].message.content
    assert plain.usage is not None and plain.usage.completion_tokens == 12
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + 12

    chunks = list(
        sdk.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hello"}],
            max_completion_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content, "greedy: streaming and plain give the same reply"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12


def test_openai_sdk_async_seed_and_stop(server: LiveServer) -> None:
    async def main() -> None:
        sdk = AsyncOpenAI(base_url=server.http + "/v1", api_key=KEYS["bob"], max_retries=0)
        model = (await sdk.models.list()).data[0].id
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
        kwargs = {"model": model, "messages": messages, "max_tokens": 30, "temperature": 1.0, "seed": 11}
        one = await sdk.chat.completions.create(**kwargs)  # type: ignore[call-overload]
        two = await sdk.chat.completions.create(**kwargs)  # type: ignore[call-overload]
        assert one.choices[0].message.content == two.choices[0].message.content
        stream = await sdk.chat.completions.create(**kwargs, stream=True)  # type: ignore[call-overload]
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert streamed == one.choices[0].message.content
        full = one.choices[0].message.content or ""
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        cut = await sdk.chat.completions.create(**kwargs, stop=[stop])  # type: ignore[call-overload]
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].message.content == full[: full.index(stop)]
        await sdk.close()

    asyncio.run(main())


def _metric(server: LiveServer, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.http + "/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _rejected(server: LiveServer, transport: str) -> float:
    return _metric(server, "qwen_chat_requests_total", transport=transport, outcome="rejected")


def test_openai_errors_use_the_openai_shape(server: LiveServer) -> None:
    model = model_name(server)
    rejected_before = _rejected(server, "openai")
    with client(server) as sdk, client(server, key="wrong") as wrong:
        _errors(sdk, wrong, model)
    # n=2, max_tokens past the cap, too long a prompt and the unknown model are refusals; validation errors are not.
    assert _rejected(server, "openai") == rejected_before + 4
    headers = {**AUTH, "Content-Type": "application/json"}
    raw = httpx.post(server.http + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"


def test_errors_the_framework_raises_use_the_openai_shape_too(server: LiveServer) -> None:
    """No such path, a wrong method and a body too odd to parse answer like every other error."""
    headers = {**AUTH, "Content-Type": "application/json"}
    huge = b'{"model": "m", "messages": [], "max_tokens": ' + b"9" * 5000 + b"}"
    for path in ("/v1/chat/completions", "/chat"):
        unparseable = httpx.post(server.http + path, content=huge, headers=headers)
        assert unparseable.status_code == 400, (path, unparseable.text)
        assert unparseable.json()["error"]["code"] == "invalid_body"
    wrong_method = httpx.get(server.http + "/v1/chat/completions", headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"] == {
        "message": "GET is not allowed here; use POST",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
    with client(server) as sdk, pytest.raises(openai.NotFoundError) as missing:
        sdk.post("/chat/completion", body={}, cast_to=httpx.Response)
    assert missing.value.code == "not_found"
    assert missing.value.message.endswith("no such endpoint; the API is described at /openapi.json")
    pasted = httpx.get(server.http + f"/v1/{KEYS['alice']}", headers=AUTH)
    assert pasted.status_code == 404 and KEYS["alice"] not in pasted.text
    static = httpx.get(server.http + "/static/no-such-file.js")
    assert static.status_code == 404 and static.json()["error"]["code"] == "not_found"


def _errors(sdk: OpenAI, wrong: OpenAI, model: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=model, messages=messages, n=2)  # type: ignore[arg-type]
    assert bad.value.status_code == 400 and bad.value.param == "n"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=model, messages=messages, temperature=5)  # type: ignore[arg-type]
    assert bad.value.param == "temperature" and "temperature" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "x"}])  # type: ignore[misc, list-item]
    assert bad.value.param == "messages.0.role"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=model, messages=messages, max_tokens=100_000)  # type: ignore[arg-type]
    assert bad.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 5000}])  # type: ignore[arg-type, list-item]
    assert bad.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-9", messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]


def test_openai_client_disconnect_stops_generation(server: LiveServer) -> None:
    body = {"model": model_name(server), "messages": [{"role": "user", "content": "go"}], "max_tokens": 512,
        "temperature": 0,
            "stream": True}  # fmt: skip
    with httpx.stream(
        "POST", server.http + "/v1/chat/completions", json=body, headers=AUTH, timeout=30
    ) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert server.engine.stats.running == 1
    started = time.monotonic()
    wait_until(lambda: server.engine.stats.running == 0, timeout=5, interval=0.01)
    assert time.monotonic() - started < 1.5


def test_simple_chat_round_trips_history(server: LiveServer) -> None:
    first = httpx.post(
        server.http + "/chat", json={"prompt": "my name is Ada", "max_length": 8}, headers=AUTH
    )
    assert first.status_code == 200, first.text
    one = first.json()
    assert set(one) >= {"response", "history", "usage", "time"}
    assert one["history"] == [["my name is Ada", one["response"]]]
    assert one["usage"]["completion_tokens"] == 8
    second = httpx.post(
        server.http + "/chat",
        json={
            "prompt": "what is my name?",
            "history": one["history"],
            "max_new_tokens": 4,
            "temperature": 0.5,
        },
        headers=AUTH,
    ).json()
    assert second["history"][:1] == one["history"] and second["history"][1][0] == "what is my name?"
    assert (
        second["usage"]["prompt_tokens"] > one["usage"]["prompt_tokens"] + one["usage"]["completion_tokens"]
    )


def test_every_http_reply_is_counted_by_how_it_ended(server: LiveServer) -> None:
    """A finished reply counts once under its finish reason, with its prompt tokens, on each HTTP API."""
    model = model_name(server)
    greedy = {"prompt": "hello", "max_new_tokens": 4, "temperature": 0}
    openai_body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    cases = [
        ("http", "/chat", greedy),
        ("sse", "/chat_stream", greedy),
        ("openai", "/v1/chat/completions", openai_body),
        ("openai", "/v1/chat/completions", {**openai_body, "stream": True}),
    ]
    for transport, path, body in cases:
        outcomes = ("length", "stop", "cancelled", "error")
        before = {
            o: _metric(server, "qwen_chat_requests_total", transport=transport, outcome=o) for o in outcomes
        }
        prompt_before = _metric(server, "qwen_chat_prompt_tokens_total")
        response = httpx.post(server.http + path, json=body, headers=AUTH)
        assert response.status_code == 200, (path, response.text)
        after = {
            o: _metric(server, "qwen_chat_requests_total", transport=transport, outcome=o) for o in outcomes
        }
        counted = {o: after[o] - before[o] for o in outcomes if after[o] != before[o]}
        assert list(counted.values()) == [1] and set(counted) <= {"length", "stop"}, (path, counted)
        assert _metric(server, "qwen_chat_prompt_tokens_total") > prompt_before, path


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "temperature": 9}, "temperature"),
        ({"prompt": "x", "max_new_tokens": "many"}, "max_new_tokens"),
        ({"prompt": "x", "history": [["only one"]]}, "history"),
        ({"prompt": "x", "unknown": 1}, "unknown"),
        ({"prompt": "x", "max_new_tokens": 100_000}, "max_new_tokens"),
    ],
)
def test_simple_chat_bad_input_is_422_naming_the_field(
    server: LiveServer, body: dict[str, object], field: str
) -> None:
    response = httpx.post(server.http + "/chat", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["message"]


def test_chat_stream_sends_events_before_the_reply_is_complete(server: LiveServer) -> None:
    arrivals: list[tuple[float, str, dict[str, object]]] = []
    body = {"prompt": "stream please", "max_new_tokens": 150}
    with httpx.stream("POST", server.http + "/chat_stream", json=body, headers=AUTH, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                arrivals.append((time.perf_counter(), event, json.loads(line.removeprefix("data: "))))
                event = "message"
    texts = [a for a in arrivals if a[1] == "message"]
    done = arrivals[-1]
    assert done[1] == "done" and len(texts) > 10
    assert texts[0][0] < done[0] - 0.05, "the first text must arrive well before the reply is complete"
    assert "".join(str(t[2]["text"]) for t in texts) == done[2]["response"]
    assert done[2]["usage"]["completion_tokens"] == 150  # type: ignore[index]


def test_http_needs_a_key(server: LiveServer) -> None:
    for path in ("/chat", "/chat_stream", "/v1/chat/completions"):
        response = httpx.post(server.http + path, json={"prompt": "x"})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.http + "/v1/models").status_code == 401


def test_full_queue_is_refused_at_once(serve: Serve) -> None:
    with serve(max_running=1, max_waiting=0) as live:
        body = {"prompt": "long", "max_new_tokens": 512, "temperature": 0}
        with httpx.stream("POST", live.http + "/chat_stream", json=body, headers=AUTH, timeout=30) as first:
            lines = first.iter_lines()  # kept: dropping the iterator would close the stream
            next(lines)
            started = time.monotonic()
            # Another user: alice herself is at her cap (half of MAX_RUNNING, at least 1).
            refused = httpx.post(live.http + "/chat", json={"prompt": "me too"}, headers=BOB)
            assert time.monotonic() - started < 1
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["code"] == "overloaded"

            async def ws_refused() -> dict[str, object]:
                async with open_socket(live.ws, user="bob") as ws:
                    return (await chat(ws, "and me"))[-1]

            error = asyncio.run(ws_refused())
            assert error["code"] == "overloaded" and error["retry_after"]


def test_a_key_at_its_cap_of_replies_at_once_gets_429_and_another_key_is_served(serve: Serve) -> None:
    # MAX_USER_REQUESTS 0: half of MAX_RUNNING 4. Replies of 1,500 tokens hold the cap while the test runs.
    with serve(max_running=4, max_waiting=4, max_new_tokens=1500, rate_limit="4/minute") as live:
        body = {"prompt": "long", "max_new_tokens": 1500, "temperature": 0}
        with ExitStack() as streams:
            lines = []  # kept: dropping an iterator would close its stream
            for _ in range(2):
                stream = streams.enter_context(
                    httpx.stream("POST", live.http + "/chat_stream", json=body, headers=AUTH, timeout=30)
                )
                lines.append(stream.iter_lines())
                next(lines[-1])
            for _ in range(3):
                with pytest.raises(openai.RateLimitError) as refused:
                    client(live).chat.completions.create(
                        model=model_name(live), messages=[{"role": "user", "content": "more"}], max_tokens=2
                    )
                assert refused.value.status_code == 429
                assert int(refused.value.response.headers["Retry-After"]) >= 1
                error = refused.value.response.json()["error"]
                assert error["code"] == "rate_limit_exceeded"
                assert "2 replies running or waiting" in error["message"]
            served = httpx.post(live.http + "/chat", json={"prompt": "x", "max_new_tokens": 2}, headers=BOB)
            assert served.status_code == 200, served.text
        # Alice's streams ended, so her cap is free again; the three refusals did not spend her rate limit
        # (4 a minute: the two streams and two more chats).

        def chat_status() -> int:
            return httpx.post(
                live.http + "/chat", json={"prompt": "x", "max_new_tokens": 2}, headers=AUTH
            ).status_code

        wait_until(lambda: chat_status() == 200, timeout=10, interval=0.2)
        assert chat_status() == 200
        limited = httpx.post(live.http + "/chat", json={"prompt": "x"}, headers=AUTH)
        assert limited.status_code == 429 and "rate limit 4/minute" in limited.json()["error"]["message"]


def test_rate_limit_on_every_transport(serve: Serve) -> None:
    with serve(rate_limit="3/minute") as live:
        for _ in range(3):
            assert httpx.post(
                live.http + "/chat", json={"prompt": "x", "max_new_tokens": 1}, headers=AUTH
            ).is_success
        limited = httpx.post(live.http + "/chat", json={"prompt": "x"}, headers=AUTH)
        assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        with pytest.raises(openai.RateLimitError):
            client(live).chat.completions.create(
                model=model_name(live), messages=[{"role": "user", "content": "x"}]
            )

        async def over_ws() -> None:
            async with open_socket(live.ws) as ws:
                error = (await chat(ws, "x"))[-1]
                assert error["code"] == "rate_limited" and 1 <= error["retry_after"] <= 60
                # The connection stays open; bob has his own budget.
                await ws.send(json.dumps({"type": "reset"}))
                assert (await chat(ws, "again"))[-1]["code"] == "rate_limited"
            async with open_socket(live.ws, user="bob") as ws:
                assert (await chat(ws, "bob here", params={"max_new_tokens": 2}))[-1]["type"] == "done"

        asyncio.run(over_ws())


async def _chats_over_each_worker(url_server: object, per_worker: int) -> list[str]:
    outcomes = []
    async with AsyncExitStack() as stack:
        held = await open_on_every_worker(stack, url_server, per_worker=1)  # type: ignore[arg-type]
        for sockets in held.values():
            for _ in range(per_worker):
                end = (await chat(sockets[0], "x", params={"max_new_tokens": 1}))[-1]
                outcomes.append(end.get("code") or end["type"])
    return outcomes


@pytest.mark.anyio
async def test_rate_limit_holds_across_the_workers_of_a_pod(tmp_path: Path, tiny_model_dir: Path) -> None:
    with serve_process(tmp_path, tiny_model_dir, workers=2, rate_limit="5/minute") as live:
        live.wait_ready()
        outcomes = await _chats_over_each_worker(live, per_worker=3)
        assert sorted(outcomes) == ["done"] * 5 + ["rate_limited"]
        response = httpx.post(live.http + "/chat", json={"prompt": "x"}, headers=AUTH)
        assert response.status_code == 429
    live.assert_clean_logs(list(KEYS.values()))


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    assert server, "Debian's redis-server package is needed (make test installs it)"
    port = free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _redis_ping(port), timeout=20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def _redis_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False


def test_redis_rate_limit_is_shared_by_two_servers(make_settings, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    from qwen_chat.app import create_app

    first_settings = make_settings(rate_limit="4/minute", rate_limit_storage=redis_url)
    second_settings = make_settings(rate_limit="4/minute", rate_limit_storage=redis_url)
    with (
        run_server(create_app(first_settings), first_settings) as one,
        run_server(create_app(second_settings), second_settings) as two,
    ):
        codes = [
            httpx.post(
                live.http + "/chat", json={"prompt": "x", "max_new_tokens": 1}, headers=AUTH
            ).status_code
            for live in (one, two, one, two, one, two)
        ]
    assert codes == [200, 200, 200, 200, 429, 429]
