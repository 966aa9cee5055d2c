"""Request deadlines on the real tiny model: a long reply past its deadline ends in time on every transport, in
that transport's shape (`/v1` streams: the error `timeout` then `[DONE]`; a whole `/v1` reply: 504; the seed
API's `/chat` and `/chat_stream`, and `/ws`: `finish_reason: "timeout"`), counted once as
`requests_total{outcome="timeout"}`, its slot freed. One decoding slot (MAX_RUNNING 1), so each reply gets the
slot the one before it freed, and a reply waiting in the queue is ended there by its deadline (the wait counts).
The operator's bound (QWEN_CHAT_REQUEST_TIMEOUT) holds whatever a request asks for; a request may shorten it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.live_server import LiveServer, wait_until
from tests.support.stream_clients import ERRORED, FINISHED, http_stream, outcomes
from tests.support.wsclient import bearer, open_socket, receive, until_end

SERVER_BOUND = 1.0  # QWEN_CHAT_REQUEST_TIMEOUT
ASKED = 0.3  # what the requests ask for
MARGIN = 1.5  # a decode step, the event loop's turn and a loaded CI machine
LONG = 1900  # tokens: ~3 s of the tiny model on one 2-core machine, far longer than either deadline
TIMEOUT_ERROR = {"type": "server_error", "param": None, "code": "timeout"}


@contextlib.contextmanager
def _within(low: float, high: float) -> Any:
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    assert low <= took < high, f"took {took:.2f} s, not in [{low}, {high})"


async def _every_transport(server: LiveServer, model: str) -> None:
    """One long reply per transport, one after the other, each asking for ASKED seconds."""
    asked = {**bearer(), "X-Request-Timeout": str(ASKED)}
    chat = {"model": model, "messages": [{"role": "user", "content": "a long story"}], "temperature": 0}
    long = {"max_tokens": LONG, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
        for path, bad_status in (("/v1/chat/completions", 400), ("/chat", 422)):  # as any bad value there
            bad = await http.post(path, json=chat, headers={**bearer(), "X-Request-Timeout": "soon"})
            assert bad.status_code == bad_status and bad.json()["error"]["param"] == "X-Request-Timeout", (
                bad.text
            )
        with _within(ASKED, ASKED + MARGIN):
            ending = await http_stream(http, "/v1/chat/completions", {**chat, **long, "stream": True}, asked)
        assert ending.how == ERRORED and ending.tokens > 0, ending
        assert ending.detail == {
            **TIMEOUT_ERROR,
            "message": "the reply did not finish within its deadline of 0.3 s",
        }
        with _within(ASKED, ASKED + MARGIN):
            completion = {"model": model, "prompt": "once", "temperature": 0, **long}
            whole = await http.post("/v1/completions", json=completion, headers=asked)
        assert whole.status_code == 504 and whole.headers["x-should-retry"] == "false", whole.text
        assert whole.json()["error"]["code"] == "timeout"
        seed = {"prompt": "a long story", "max_new_tokens": LONG, "temperature": 0}
        with _within(ASKED, ASKED + MARGIN):
            ending = await http_stream(http, "/chat_stream", seed, asked)
        assert ending.how == FINISHED and ending.detail == "timeout" and ending.tokens > 0, ending
        with _within(ASKED, ASKED + MARGIN):
            whole = await http.post("/chat", json=seed, headers=asked)
        assert whole.status_code == 200 and whole.json()["finish_reason"] == "timeout", whole.text
        assert whole.json()["response"] and whole.json()["usage"]["completion_tokens"] < LONG
    async with open_socket(server.ws) as ws:
        params = {"max_new_tokens": LONG, "ignore_eos": True, "temperature": 0, "timeout": ASKED}
        with _within(ASKED, ASKED + MARGIN):
            await ws.send(
                json.dumps({"type": "chat", "id": "w", "content": "a long story", "params": params})
            )
            frames = await until_end(ws)
        assert frames[0] == {"type": "start", "id": "w", "queue_position": 0}, "the slots before were freed"
        assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "timeout", frames[-1]
        assert 0 < frames[-1]["usage"]["completion_tokens"] < LONG


async def _in_the_queue(server: LiveServer, model: str) -> None:
    """A reply holds the one slot under the operator's bound, asking for more; another, asking for ASKED,
    waits behind it and is ended in the queue."""
    body = {"model": model, "prompt": "once", "max_tokens": LONG, "ignore_eos": True, "stream": True}
    more = {**bearer(), "X-Request-Timeout": "100"}  # cannot lengthen the operator's bound
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=30) as http,
        open_socket(server.ws, user="bob") as ws,  # alice has her one reply at once (MAX_USER_REQUESTS)
    ):
        started = time.monotonic()
        streaming = asyncio.Event()
        holder = asyncio.ensure_future(http_stream(http, "/v1/completions", body, more, streaming))
        await asyncio.wait_for(streaming.wait(), 10)
        params = {"max_new_tokens": 8, "timeout": ASKED}
        with _within(ASKED, ASKED + MARGIN):
            await ws.send(json.dumps({"type": "chat", "id": "q", "content": "my turn?", "params": params}))
            assert (await receive(ws))["queue_position"] == 1
            done = (await until_end(ws))[-1]
        assert done["finish_reason"] == "timeout" and done["usage"]["completion_tokens"] == 0, done
        ending = await holder
        took = time.monotonic() - started
        assert SERVER_BOUND <= took < SERVER_BOUND + MARGIN, took
        assert ending.how == ERRORED and ending.detail["code"] == "timeout", ending
        assert "deadline of 1 s" in ending.detail["message"]


def test_a_deadline_ends_a_long_reply_in_time_on_every_transport_and_frees_its_slot(
    serve: Callable[..., Any],
) -> None:
    with serve(max_running=1, max_new_tokens=LONG, request_timeout=SERVER_BOUND) as server:
        model = server.service.settings.model_name
        before = outcomes(server.http)
        asyncio.run(_every_transport(server, model))
        asyncio.run(_in_the_queue(server, model))
        wait_until(lambda: server.engine.stats.running == 0 and server.engine.stats.waiting == 0, 5, 0.02)
        # The slot serves the next reply at once, whole.
        after = httpx.post(
            server.http + "/v1/completions",
            json={"model": model, "prompt": "once", "max_tokens": 4, "ignore_eos": True},
            headers=bearer(),
            timeout=30,
        )
        assert after.status_code == 200 and after.json()["choices"][0]["finish_reason"] == "length"
        counted = {key: n - before[key] for key, n in outcomes(server.http).items() if n != before[key]}
    assert counted == {
        ("openai", "timeout"): 3,
        ("sse", "timeout"): 1,
        ("http", "timeout"): 1,
        ("ws", "timeout"): 2,
        ("openai", "rejected"): 1,  # the bad headers, refused before admission
        ("http", "rejected"): 1,
        ("openai", "length"): 1,
    }
