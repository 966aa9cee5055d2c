"""Fault soak: clients chat in a loop on every streaming transport of a real 2-worker `qwen-chat serve` while
an engine process is SIGKILLed at intervals.

Every reply must end in a way its client can read: finished, an error event (`/v1`: OpenAI's error object
then `[DONE]`; `/chat_stream`: its `error` event; `/ws`: its `error` frame), or refused before it began while
the engine restarts. None cut mid-body, none hung; `requests_total` counts each exactly once, and its `error`
outcome exactly the replies whose clients read an error. Figures: test-output/reliability/fault_soak.json.

`make test` runs it for FAULT_SOAK_SECONDS (20 s, an engine killed every 7 s); docs/reliability.md quotes a
run of 100 s with a kill every 30 s:
`FAULT_SOAK_SECONDS=100 FAULT_SOAK_KILL_EVERY=30 .venv/bin/python -m pytest -s tests/test_reliability_fault_soak.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.live_server import wait_until
from tests.support.reliability_tools import Figures, leaked_secrets, secrets_of
from tests.support.secret_volume import KEYS
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.stream_clients import CUT, ERRORED, FINISHED, HUNG, REFUSED, Ending, http_stream, sdk_chat
from tests.support.wsclient import bearer, open_socket, receive

pytestmark = pytest.mark.anyio

SOAK_SECONDS = float(os.environ.get("FAULT_SOAK_SECONDS", "20"))
KILL_EVERY = float(os.environ.get("FAULT_SOAK_KILL_EVERY", "7"))
CLIENTS = {"ws": 12, "sdk_chat": 6, "completions": 6, "chat_stream": 4}
MAX_TOKENS = 48  # replies of a few seconds at 28 clients on the tiny model: kills land mid-stream
DEADLINE = 60.0
REFUSED_CODES = {"overloaded", "rate_limited"}  # what a reply may be refused with while an engine restarts


async def ws_chat(ws: Any, mid: str) -> Ending:
    """One /ws chat read to its end, classified as the HTTP clients' endings are."""
    await ws.send(
        json.dumps(
            {"type": "chat", "id": mid, "content": f"chat {mid}", "params": {"max_new_tokens": MAX_TOKENS}}
        )
    )
    tokens = 0
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                frame = await receive(ws, DEADLINE)
                if frame.get("id") != mid:
                    return Ending(CUT, f"a frame of another chat: {frame}")
                if frame["type"] == "token":
                    tokens += 1
                elif frame["type"] == "done":
                    return Ending(FINISHED, frame["finish_reason"], tokens)
                elif frame["type"] == "error":
                    if frame["code"] in REFUSED_CODES and not tokens:
                        return Ending(REFUSED, (frame["code"], frame.get("retry_after")), tokens)
                    return Ending(ERRORED, {"code": frame["code"], "message": frame["message"]}, tokens)
    except TimeoutError:
        return Ending(HUNG, f"no end in {DEADLINE} s", tokens)


class Soak:
    def __init__(self, server: ServeProcess, model: str) -> None:
        self.server = server
        self.model = model
        self.until = time.monotonic() + SOAK_SECONDS
        self.endings: Counter[str] = Counter()
        self.by_kind: Counter[tuple[str, str]] = Counter()
        self.odd: list[str] = []  # every cut or hung reply, and any error a client should not see
        self.sdk_refusals = 0  # 429s and 503s the SDK was answered, its own retries included

    async def on_sdk_response(self, response: Any) -> None:  # the SDK's own client's response
        if response.status_code in (429, 503):
            self.sdk_refusals += 1

    def record(self, kind: str, ending: Ending) -> None:
        self.endings[ending.how] += 1
        self.by_kind[(kind, ending.how)] += 1
        if ending.how in (CUT, HUNG) or (
            ending.how == ERRORED and "internal" not in json.dumps(ending.detail)
        ):
            self.odd.append(f"{kind}: {ending}")

    async def pause(self, ending: Ending) -> None:
        """A refused client waits before it asks again: half a second here (the server says 5 s), so that
        many requests meet a restarting engine."""
        if ending.how == REFUSED:
            await asyncio.sleep(0.5)

    async def ws_client(self, number: int) -> None:
        async with open_socket(self.server.ws) as ws:
            turn = 0
            while time.monotonic() < self.until:
                turn += 1
                try:
                    ending = await ws_chat(ws, f"c{number}-{turn}")
                except ConnectionClosed as exc:
                    self.record("ws", Ending(CUT, f"the socket closed: {exc}"))
                    return
                self.record("ws", ending)
                await self.pause(ending)

    async def http_client(self, kind: str, http: httpx.AsyncClient, sdk: openai.AsyncOpenAI) -> None:
        messages = [{"role": "user", "content": "tell me a story"}]
        while time.monotonic() < self.until:
            if kind == "sdk_chat":
                ending = await sdk_chat(
                    sdk, None, DEADLINE, model=self.model, messages=messages, max_tokens=MAX_TOKENS
                )
            elif kind == "completions":
                body = {
                    "model": self.model,
                    "prompt": "Once upon a time",
                    "max_tokens": MAX_TOKENS,
                    "stream": True,
                }
                ending = await http_stream(http, "/v1/completions", body, bearer(), deadline=DEADLINE)
            else:
                body = {"prompt": "tell me a story", "max_new_tokens": MAX_TOKENS}
                ending = await http_stream(http, "/chat_stream", body, bearer(), deadline=DEADLINE)
            if ending.how == REFUSED and ending.detail[0] not in (429, 503):
                self.odd.append(f"{kind}: refused with {ending.detail}")
            self.record(kind, ending)
            await self.pause(ending)

    async def killer(self, kills: list[dict[str, Any]]) -> None:
        """SIGKILL one worker's engine every KILL_EVERY seconds, the workers in turn."""
        workers = self.server.workers()
        started = time.monotonic()
        while (at := started + KILL_EVERY * (len(kills) + 1)) < self.until:
            await asyncio.sleep(at - time.monotonic())
            worker = workers[len(kills) % len(workers)]
            engine = self.server.engine_of(worker)
            if engine is None:  # still restarting from a kill: try again shortly
                await asyncio.sleep(0.1)
                continue
            os.kill(engine, signal.SIGKILL)
            kills.append({"at_s": round(time.monotonic() - started, 1), "worker": worker, "engine": engine})


def _counted(server: ServeProcess) -> Counter[str]:
    return Counter(
        {
            outcome: server.metric("qwen_chat_requests_total", outcome=outcome) or 0
            for outcome in ("stop", "length", "cancelled", "error", "rejected", "rate_limited")
        }
    )


async def test_fault_soak_engines_killed_while_every_transport_streams(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = {
        "max_new_tokens": str(MAX_TOKENS),
        "rate_limit": "100000/minute",
        "max_user_requests": "64",
        "max_user_connections": "64",
    }
    figures = Figures("fault_soak")
    with serve_process(tmp_path, tiny_model_dir, workers=2, **settings) as server:
        server.wait_ready()
        workers = server.workers()
        model = httpx.get(server.http + "/v1/models", headers=bearer()).json()["data"][0]["id"]
        before = _counted(server)
        soak = Soak(server, model)
        kills: list[dict[str, Any]] = []
        started = time.monotonic()
        # The SDK with its default retries, as users run it; its refusals are counted as they come.
        hooks = {"response": [soak.on_sdk_response]}
        async with (
            httpx.AsyncClient(base_url=server.http, timeout=DEADLINE) as http,
            openai.DefaultAsyncHttpxClient(event_hooks=hooks) as sdk_http,
            openai.AsyncOpenAI(
                base_url=server.http + "/v1", api_key=KEYS["alice"], http_client=sdk_http
            ) as sdk,
        ):
            clients = [soak.ws_client(n) for n in range(CLIENTS["ws"])]
            for kind in ("sdk_chat", "completions", "chat_stream"):
                clients += [soak.http_client(kind, http, sdk) for _ in range(CLIENTS[kind])]
            await asyncio.gather(soak.killer(kills), *clients)
        seconds = time.monotonic() - started
        await asyncio.to_thread(server.wait_ready, 120)
        await asyncio.to_thread(wait_until, lambda: server.metric("qwen_chat_requests_running") == 0, 30, 0.2)
        counted = _counted(server) - before
        figures.set(
            soak_seconds=round(seconds, 1),
            kill_every_s=KILL_EVERY,
            clients=CLIENTS,
            max_tokens=MAX_TOKENS,
            kills=kills,
            engine_restarts=server.metric("qwen_chat_engine_restarts_total"),
            counted_by_the_server=dict(counted),
            by_transport={f"{kind} {how}": n for (kind, how), n in sorted(soak.by_kind.items())},
            sdk_refusals_retried_or_not=soak.sdk_refusals,
            odd=soak.odd[:10],
        )
        figures.counts.update(soak.endings)
        figures.write()
        assert server.workers() == workers, "no worker died with its engine"
        log = server.log.read_text()
    assert not leaked_secrets({"log": log}, secrets_of())
    assert len(kills) == int((SOAK_SECONDS - 1e-9) // KILL_EVERY), kills
    assert soak.endings[CUT] == soak.endings[HUNG] == 0 and not soak.odd, soak.odd[:5]
    assert soak.endings[ERRORED] > 0 and soak.endings[FINISHED] > 0, dict(soak.endings)
    # The server counted every reply once, and as an error exactly those whose clients read an error.
    assert counted["error"] == soak.endings[ERRORED], (dict(counted), dict(soak.endings))
    assert counted["stop"] + counted["length"] == soak.endings[FINISHED]
    refused = soak.endings[REFUSED] - soak.by_kind[("sdk_chat", REFUSED)] + soak.sdk_refusals
    assert counted["rejected"] + counted["rate_limited"] == refused
    assert counted["cancelled"] == 0
