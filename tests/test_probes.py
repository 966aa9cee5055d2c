"""/livez answers from the start; /readyz turns 200 only once the model is loaded and warm."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest

from qwen_chat.app import create_app
from qwen_chat.engine.api.in_thread import ThreadEngine
from qwen_chat.runtime.lifecycle import WorkerLifecycle
from tests.support.live_server import run_server, wait_until
from tests.support.secret_volume import KEYS
from tests.support.wsclient import open_socket, receive

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": f"Bearer {KEYS['alice']}"}


class GatedEngine(ThreadEngine):
    """The real engine, whose load waits for the test to open the gate."""

    gate: threading.Event

    async def start(self) -> None:
        await asyncio.to_thread(self.gate.wait, 30)
        await super().start()


async def test_readyz_is_503_loading_until_warm_while_livez_is_200(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    engine = GatedEngine(settings)
    engine.gate = threading.Event()
    app = create_app(settings, engine=engine)
    lifecycle = WorkerLifecycle.of(app)  # what the gunicorn worker finds on the app it serves
    assert lifecycle is not None and lifecycle.drain is None
    with run_server(app, settings, wait_ready=False) as live:
        assert lifecycle.drain is not None, "while it serves, the app offers its drain for SIGTERM"
        async with httpx.AsyncClient(base_url=live.http) as client:
            before = await client.get("/readyz")
            assert before.status_code == 503
            assert before.json() == {"status": "loading", "workers_ready": 0, "workers": 1}
            assert (await client.get("/livez")).status_code == 200
            # vLLM's and TGI's /health, which benchmark clients probe first: no key, 503 until it can serve.
            assert (await client.get("/health")).status_code == 503
            listed = (await client.get("/v1/models", headers=AUTH)).json()["data"][0]
            assert listed["max_model_len"] is None and listed["sampling_defaults"] is None
            # A chat before the model is ready is refused with a retry hint, not lost in a hang.
            async with open_socket(live.ws) as ws:
                await ws.send(json.dumps({"type": "chat", "content": "hi", "id": "early"}))
                error = await receive(ws)
            assert error["code"] == "overloaded" and error["id"] == "early" and error["retry_after"] > 0
            engine.gate.set()
            livez_codes = []

            def ready() -> bool:
                livez_codes.append(httpx.get(live.http + "/livez").status_code)
                return httpx.get(live.http + "/readyz").status_code == 200

            await asyncio.to_thread(wait_until, ready, 30, 0.02)
            assert set(livez_codes) == {200}
            after = await client.get("/readyz")
            assert after.json() == {"status": "ready", "workers_ready": 1, "workers": 1}
            health = await client.get("/health")
            assert health.status_code == 200 and health.content == b""
            listed = (await client.get("/v1/models", headers=AUTH)).json()["data"][0]
            # vLLM's fields: the tiny model's context, what MODEL names, no base model.
            assert listed["max_model_len"] == 2048 and listed["parent"] is None
            assert listed["root"] == settings.model
    assert lifecycle.drain is None, "a stopped app offers no drain"


async def test_readyz_reports_failed_when_the_model_cannot_load(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(model=str(tmp_path / "no-such-model"))
    with run_server(create_app(settings), settings, wait_ready=False) as live:
        await asyncio.to_thread(
            wait_until, lambda: httpx.get(live.http + "/readyz").json()["status"] == "failed", 30
        )
        response = httpx.get(live.http + "/readyz")
        assert response.status_code == 503
        assert httpx.get(live.http + "/livez").status_code == 200


async def test_probes_need_no_key(server) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=server.http) as client:
        assert (await client.get("/livez")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
