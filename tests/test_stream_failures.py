"""A reply that fails after it began streaming ends in its transport's error shape, never a cut connection.

On `/v1` an event holding OpenAI's error object then `[DONE]` (the `openai` SDK raises `APIError` with the
message); on `/chat_stream` the `error` event; on `/ws` the `error` frame, the socket kept. Each is counted once
as `requests_total{outcome="error"}`, and the client is told nothing internal. Here in one process, with an
engine that fails and with a bug planted in our own code; the engine process killed under a real
`qwen-chat serve` is `tests/test_process_model.py`, the drain's cut `::test_sigterm_cancels_replies_...`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from qwen_chat.app import create_app
from qwen_chat.chat.stream import ChatStream
from qwen_chat.engine.api.in_thread import ThreadEngine
from qwen_chat.http import seed_api
from qwen_chat.http.openai_api import Envelope
from qwen_chat.settings import Settings
from qwen_chat.ws import protocol
from tests.support.live_server import LiveServer, run_server, wait_until
from tests.support.scripted_engine import FailingEngine, HangingEngine, ScriptedEngine
from tests.support.secret_volume import KEYS
from tests.support.stream_clients import ERRORED, FINISHED, Ending, http_stream, outcomes, sdk_chat
from tests.support.wsclient import bearer, open_socket, until_end

TRANSPORTS = ("openai", "sse", "ws")
ENGINE_FAILED = "the model failed to generate a reply"
SERVER_FAILED = "the server failed while sending the reply"


def _errors(server: LiveServer) -> dict[str, float]:
    counted = outcomes(server.http)
    return {transport: counted[(transport, "error")] for transport in TRANSPORTS}


async def _every_transport(server: LiveServer, model: str) -> tuple[dict[str, Ending], list[list[Any]]]:
    """One streamed reply on each kind of client, read to its end; and two chats on one /ws socket."""
    messages = [{"role": "user", "content": "hello"}]
    requests: dict[str, tuple[str, dict[str, Any]]] = {
        "chat": ("/v1/chat/completions", {"model": model, "messages": messages, "stream": True}),
        "completions": ("/v1/completions", {"model": model, "prompt": "hello", "stream": True}),
        "chat_stream": ("/chat_stream", {"prompt": "hello"}),
    }
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=30) as http,
        openai.AsyncOpenAI(base_url=server.http + "/v1", api_key=KEYS["alice"]) as sdk,
    ):
        endings = {
            name: await http_stream(http, path, body, bearer()) for name, (path, body) in requests.items()
        }
        endings["sdk"] = await sdk_chat(sdk, model=model, messages=messages)
    chats = []
    async with open_socket(server.ws) as ws:
        for mid in ("m", "n"):  # the socket outlives the first failure
            await ws.send(json.dumps({"type": "chat", "id": mid, "content": "hello"}))
            chats.append(await until_end(ws, timeout=30))
    return endings, chats


def _assert_told(
    endings: dict[str, Ending], chats: list[list[Any]], message: str, first_token: bool = True
) -> None:
    openai_error = {"message": message, "type": "server_error", "param": None, "code": "internal"}
    assert endings["chat"].how == endings["completions"].how == ERRORED, endings
    assert endings["chat"].detail == endings["completions"].detail == openai_error
    assert endings["sdk"].how == ERRORED and endings["sdk"].detail == {
        "exception": "APIError",
        **openai_error,
    }
    assert endings["chat_stream"].how == ERRORED
    assert endings["chat_stream"].detail == {"message": message, "code": "internal"}
    for mid, frames in zip(("m", "n"), chats, strict=True):
        types = [f["type"] for f in frames]
        assert types[0] == "start" and set(types[1:-1]) <= {"token"}, frames
        assert types == ["start", "token", "error"] or not first_token, frames
        assert frames[-1] == {"type": "error", "id": mid, "code": "internal", "message": message}
    if first_token:
        assert all(e.tokens == 1 for e in endings.values()), (
            "what streamed before the failure reached the client"
        )


def _fails_on_every_transport(
    settings: Settings, engine: ThreadEngine, message: str, first_token: bool = True
) -> None:
    """Every transport's reply ends with `message` in its error shape, nothing internal shown, and each
    counted once as `error`: one per HTTP stream (the SDK's too), two on the socket."""
    with run_server(create_app(settings, engine=engine), settings) as server:
        before = _errors(server)
        endings, chats = asyncio.run(_every_transport(server, settings.model_name))
        after = _errors(server)
    _assert_told(endings, chats, message, first_token)
    shown = repr(endings) + repr(chats)
    assert "secret" not in shown and "CUDA" not in shown and "/work" not in shown
    assert {t: after[t] - before[t] for t in TRANSPORTS} == {"openai": 3, "sse": 1, "ws": 2}


def test_an_engine_failure_mid_reply_ends_every_stream_with_an_error(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    _fails_on_every_transport(settings, FailingEngine(settings), ENGINE_FAILED)


@pytest.fixture
def buggy_split(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A bug of ours in the reply's text path: the first piece passes, the second raises."""
    split = ChatStream._split

    def failing(self: ChatStream, text: str, completion: int, end: bool = False) -> Any:
        if completion > 1:
            raise RuntimeError("a bug at /work/main/service/qwen_chat/chat/stream.py")
        return split(self, text, completion, end)

    monkeypatch.setattr(ChatStream, "_split", failing)
    yield


def test_a_bug_of_ours_mid_reply_ends_every_stream_with_an_error(
    make_settings: Callable[..., Settings], buggy_split: None
) -> None:
    settings = make_settings()
    _fails_on_every_transport(settings, ScriptedEngine(settings), SERVER_FAILED)


def _fails_on_second_piece(real: Callable[..., Any]) -> Callable[..., Any]:
    """`real`, except that it raises once what it renders holds the script's second piece."""

    def rendering(*args: Any, **kwargs: Any) -> Any:
        if "that up" in repr(args) + repr(kwargs):  # SCRIPT[1]
            raise TypeError("a bug at /work/main/service/qwen_chat/http/openai_api.py")
        return real(*args, **kwargs)

    return rendering


def test_a_bug_in_the_code_that_renders_the_reply_ends_every_stream_with_an_error(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure is outside the reply's own events: the transport's rendering of a delta raises."""
    monkeypatch.setattr(Envelope, "event", _fails_on_second_piece(Envelope.event))
    monkeypatch.setattr(seed_api, "format_sse_event", _fails_on_second_piece(seed_api.format_sse_event))
    monkeypatch.setattr(protocol, "token", _fails_on_second_piece(protocol.token))
    settings = make_settings()
    _fails_on_every_transport(settings, ScriptedEngine(settings), SERVER_FAILED, first_token=False)


async def _cut_by_the_drain(server: LiveServer, model: str) -> dict[str, Any]:
    """A reply on every transport, each with its first token out, then the worker drains (DRAIN_SECONDS 0.2)."""
    messages = [{"role": "user", "content": "hello"}]
    chat_body = {"model": model, "messages": messages}
    loop = server.engine._loop
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=30) as http,
        open_socket(server.ws) as ws,
    ):
        headers = bearer()
        streams = {
            "chat": http_stream(http, "/v1/chat/completions", {**chat_body, "stream": True}, headers),
            "completions": http_stream(
                http, "/v1/completions", {"model": model, "prompt": "hi", "stream": True}, headers
            ),
            "chat_stream": http_stream(http, "/chat_stream", {"prompt": "hello"}, headers),
        }
        tasks = {name: asyncio.ensure_future(client) for name, client in streams.items()}
        whole = asyncio.ensure_future(http.post("/v1/chat/completions", json=chat_body, headers=headers))
        await ws.send(json.dumps({"type": "chat", "id": "w", "content": "hello"}))
        await asyncio.to_thread(wait_until, lambda: len(server.service.drain.replies) == 5, 10, 0.02)
        draining = asyncio.run_coroutine_threadsafe(server.service.drain.run(), loop)
        ended: dict[str, Any] = {name: await task for name, task in tasks.items()}
        ended["whole"] = await whole
        ended["ws"] = await until_end(ws, timeout=10)
        await asyncio.wrap_future(draining)
    return ended


def test_a_reply_the_drain_cuts_short_says_so_on_every_transport(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(drain_seconds=0.2)
    with run_server(create_app(settings, engine=HangingEngine(settings)), settings) as server:
        before = outcomes(server.http)
        ended = asyncio.run(_cut_by_the_drain(server, settings.model_name))
        counted = {
            key: n - before.get(key, 0) for key, n in outcomes(server.http).items() if n != before.get(key, 0)
        }
    shutting_down = {"message": "the server is shutting down", "type": "server_error", "param": None}
    # /v1 has no `cancelled`: an error says the reply is not whole, where `stop` would pass it off as whole.
    for name in ("chat", "completions"):
        assert ended[name].how == ERRORED and ended[name].tokens == 1, ended[name]
        assert ended[name].detail == {**shutting_down, "code": "overloaded"}
    assert ended["whole"].status_code == 503 and ended["whole"].headers["Retry-After"] == "5"
    assert ended["whole"].json() == {"error": {**shutting_down, "code": "overloaded"}}
    # The seed API and /ws have the word: their replies end `cancelled`, as the contract says.
    assert ended["chat_stream"].how == FINISHED and ended["chat_stream"].detail == "cancelled"
    assert ended["ws"][-1]["type"] == "done" and ended["ws"][-1]["finish_reason"] == "cancelled"
    # Each counted once, as cancelled: the server cut them, nothing failed.
    assert counted == {("openai", "cancelled"): 3, ("sse", "cancelled"): 1, ("ws", "cancelled"): 1}
