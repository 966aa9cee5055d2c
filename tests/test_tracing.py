"""Traces: `qwen-chat serve` (two gunicorn workers) exports OpenTelemetry spans over OTLP/HTTP to a
receiver in this process, which decodes them with the published `opentelemetry-proto` types.

Each chat is one trace: on HTTP under FastAPI's server span, on /ws a server span per chat message
parented to the handshake's `traceparent`; under it `queue`, `prefill` and `decode` with the model, the
token counts, the finish reason, the queue position and the user. No key and no prompt text (LOG_PROMPTS
is off) is in any byte exported, and log lines carry the ids of their trace.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from qwen_chat import tracing
from qwen_chat.app import create_app
from qwen_chat.settings import Settings
from tests.support.live_server import wait_until
from tests.support.otlp_receiver import Received, otlp_receiver
from tests.support.secret_volume import KEYS
from tests.support.serve_process import serve_process
from tests.support.wsclient import open_socket, until_end

pytestmark = pytest.mark.anyio

# Each transport's prompt names something only it says, so a leak would be found, and told apart.
PROMPTS = {
    "ws": "the violet heron of socket street",
    "openai": "the amber walrus of completions road",
    "sse": "the copper lynx of stream lane",
}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"  # the W3C example ids
CLIENT_SPAN = "00f067aa0ba902b7"
PHASES = ("queue", "prefill", "decode")
GREEDY = {"max_new_tokens": 6, "temperature": 0}
AUTH = {"Authorization": f"Bearer {KEYS['alice']}"}


def children(spans: list[Received], parent: Received) -> dict[str, Received]:
    found = {s.name: s for s in spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id}
    assert len(found) == len([s for s in spans if s.parent_id == parent.span_id]), "one span per name"
    return found


def check_reply(spans: list[Received], reply: Received, model: str, transport: str, completion: int) -> None:
    """The reply span's attributes, and its three phases in order inside it."""
    attrs = reply.attributes
    assert attrs["gen_ai.request.model"] == model and attrs["qwen_chat.transport"] == transport
    assert attrs["user.id"] == "alice"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] == completion
    assert attrs["gen_ai.response.finish_reasons"] == ["length"]
    assert attrs["qwen_chat.queue_position"] == 0
    assert "gen_ai.input.messages" not in attrs  # LOG_PROMPTS is off
    phases = children(spans, reply)
    assert set(phases) == set(PHASES), phases.keys()
    queue, prefill, decode = (phases[name].span for name in PHASES)
    assert reply.span.start_time_unix_nano <= queue.start_time_unix_nano
    assert queue.end_time_unix_nano <= prefill.start_time_unix_nano + 1
    assert prefill.end_time_unix_nano <= decode.start_time_unix_nano + 1
    assert decode.end_time_unix_nano <= reply.span.end_time_unix_nano
    assert phases["queue"].attributes["qwen_chat.queue_position"] == 0
    assert phases["prefill"].attributes["gen_ai.usage.input_tokens"] == attrs["gen_ai.usage.input_tokens"]
    assert phases["decode"].attributes["gen_ai.usage.output_tokens"] == completion
    assert phases["decode"].attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert all(p.attributes["gen_ai.request.model"] == model for p in phases.values())


def one(spans: list[Received], **where: Any) -> Received:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, [(s.name, s.parent_id) for s in spans])
    return found[0]


async def every_other_way_a_chat_ends(http: str, ws_url: str, model: str) -> list[tuple[str, str]]:
    """A chat on each remaining path, and ones cut short; the (transport, finish reason) of each."""
    long = {"max_new_tokens": 400, "temperature": 0}
    async with httpx.AsyncClient(base_url=http, timeout=60, headers=AUTH) as client:
        assert (await client.post("/chat", json={"prompt": "hi", **GREEDY})).status_code == 200
        completion = {"model": model, "prompt": "once upon", "max_tokens": 4, "temperature": 0}
        assert (await client.post("/v1/completions", json=completion)).status_code == 200
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        streamed = await client.post("/v1/chat/completions", json={**chat, "stream": True})
        assert streamed.text.rstrip().endswith("data: [DONE]")
        async with client.stream("POST", "/chat_stream", json={"prompt": "a long story", **long}) as gone:
            async for line in gone.aiter_lines():  # the client leaves after the first token
                if line.startswith("data: "):
                    break
    async with open_socket(ws_url) as ws:
        await ws.send(json.dumps({"type": "chat", "content": "a long story", "params": long}))
        await ws.recv(), await ws.recv()  # start, then a token
        await ws.send(json.dumps({"type": "cancel"}))
        assert (await until_end(ws))[-1]["finish_reason"] == "cancelled"
        await ws.send(json.dumps({"type": "chat", "content": "a long story", "params": long}))
        await ws.recv()  # start: then the socket closes under the reply
    return [
        ("http", "length"),
        ("openai", "length"),
        ("openai", "length"),
        ("sse", "cancelled"),
        ("ws", "cancelled"),
        ("ws", "cancelled"),
    ]


async def test_each_chat_is_one_trace_with_its_queue_prefill_and_decode(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    environ = {
        "OTEL_SERVICE_NAME": "chat-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: the batch leaves soon after the reply
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",  # the leak check below reads what it unpacks
    }
    headers = tmp_path / "otlp-headers"  # the chart mounts a Secret here
    headers.write_text("x-scope-orgid=tenant-a\n")
    with otlp_receiver() as receiver:
        environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        with serve_process(
            tmp_path, tiny_model_dir, environ=environ, otlp_headers_file=str(headers)
        ) as server:
            server.wait_ready()
            sdk = AsyncOpenAI(base_url=server.http + "/v1", api_key=KEYS["alice"], max_retries=0, timeout=60)
            model = (await sdk.models.list()).data[0].id
            handshake = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
            async with open_socket(server.ws, additional_headers=handshake) as ws:
                chats = []
                for mid in ("m1", "m2"):  # two messages of one connection: two traces' roots, one parent
                    frame = {"type": "chat", "id": mid, "content": PROMPTS["ws"], "params": GREEDY}
                    await ws.send(json.dumps(frame))
                    chats.append((await until_end(ws))[-1])
            other_trace = "0af7651916cd43dd8448eb211c80319c"
            reply = await sdk.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": PROMPTS["openai"]}],
                max_tokens=6,
                temperature=0,
                extra_headers={"traceparent": f"00-{other_trace}-b7ad6b7169203331-01"},
            )
            await sdk.close()
            body = {"prompt": PROMPTS["sse"], **GREEDY}
            async with httpx.AsyncClient(base_url=server.http, timeout=60) as client:
                sse = await client.post("/chat_stream", json=body, headers=AUTH)
                too_long = {"prompt": "word " * 5000, "max_new_tokens": 4}
                refused = await client.post("/chat_stream", json=too_long, headers=AUTH)
                # A key in the URL (seed-style, refused on HTTP) must not reach the span's url attributes.
                query = {"userid": "alice", "secret": KEYS["alice"]}
                in_url = await client.post("/chat_stream", json=body, params=query)
            assert (sse.status_code, refused.status_code, in_url.status_code) == (200, 422, 401)
            ended = await every_other_way_a_chat_ends(server.http, server.ws, model)

            def arrived() -> bool:
                names = [s.name for s in receiver.snapshot()]
                return names.count("decode") >= 4 and names.count(f"chat {model}") >= 4

            wait_until(arrived, timeout=30, interval=0.2)
        # The server has stopped: what its workers still held left with them (tracing.shutdown).
        log_lines = [json.loads(line) for line in server.log_lines() if line.startswith("{")]
        spans = receiver.snapshot()
        raw = receiver.raw()

    # Every chat's span ended, however the chat ended: 2 on /ws, /v1, 2 on /chat_stream, and the rest.
    replies = [s for s in spans if "qwen_chat.transport" in s.attributes]
    assert len(replies) == 5 + len(ended), sorted(
        (s.name, s.attributes["qwen_chat.transport"]) for s in replies
    )
    for transport, reason in ended:
        assert any(
            s.attributes["qwen_chat.transport"] == transport
            and s.attributes.get("gen_ai.response.finish_reasons") == [reason]
            for s in replies
        ), (transport, reason)
    assert all(
        s.attributes.get("gen_ai.response.finish_reasons") or s.attributes.get("error.type") for s in replies
    )
    assert set(receiver.paths) == {"/v1/traces"}
    assert {h.get("x-scope-orgid") for h in receiver.headers} == {"tenant-a"}
    assert receiver.compressed == len(receiver.bodies), "OTEL_EXPORTER_OTLP_COMPRESSION reaches the exporter"
    assert {s.resource["service.name"] for s in spans} == {"chat-under-test"}
    reply_name = f"chat {model}"

    # /ws: a server span per chat message, each the child of the handshake's traceparent.
    ws_replies = [s for s in spans if s.name == reply_name and "qwen_chat.message_id" in s.attributes]
    assert sorted(s.attributes["qwen_chat.message_id"] for s in ws_replies) == ["m1", "m2"]
    by_id = sorted(ws_replies, key=lambda s: s.attributes["qwen_chat.message_id"])
    for span, done in zip(by_id, chats, strict=True):
        assert span.trace_id == CLIENT_TRACE and span.parent_id == CLIENT_SPAN
        assert span.span.kind == span.span.SPAN_KIND_SERVER
        check_reply(spans, span, model, "ws", done["usage"]["completion_tokens"])
    # Its log line carries the message's trace and span.
    (ws_done,) = [line for line in log_lines if line.get("event") == "chat_done" and line.get("id") == "m1"]
    m1 = next(s for s in ws_replies if s.attributes["qwen_chat.message_id"] == "m1")
    assert (ws_done["trace_id"], ws_done["span_id"]) == (m1.trace_id, m1.span_id)

    # /v1: FastAPI's server span, the child of the client's traceparent; the reply span under it.
    server_span = one(spans, name="POST /v1/chat/completions", trace_id=other_trace)
    assert server_span.trace_id == other_trace and server_span.parent_id == "b7ad6b7169203331"
    openai_reply = one(spans, name=reply_name, parent_id=server_span.span_id)
    assert reply.usage is not None
    check_reply(spans, openai_reply, model, "openai", reply.usage.completion_tokens)

    # /chat_stream: a trace of its own (no traceparent sent), and a refused one that says why.
    streams = [s for s in spans if s.name == "POST /chat_stream"]
    assert len(streams) == 4 and all(s.parent_id == "" for s in streams)  # with the one that left early
    sse = [s for s in spans if s.name == reply_name and s.attributes["qwen_chat.transport"] == "sse"]
    (sse_reply,) = [s for s in sse if s.attributes.get("gen_ai.response.finish_reasons") == ["length"]]
    (refused,) = [s for s in sse if "error.type" in s.attributes]
    check_reply(spans, sse_reply, model, "sse", GREEDY["max_new_tokens"])
    assert refused.attributes["error.type"] == "too_long" and refused.attributes["user.id"] == "alice"
    assert not children(spans, refused)

    # No key, in the URL or anywhere, and no prompt in any byte that left the server.
    for secret in (*KEYS.values(), *PROMPTS.values()):
        assert secret.encode() not in raw, secret
    urls = [
        v for s in streams for k, v in s.attributes.items() if k in ("url.query", "http.target", "http.url")
    ]
    assert any("secret=[redacted]" in url for url in urls), urls
    # Probes and scrapes are not traced.
    assert not [s for s in spans if "readyz" in s.name or "metrics" in s.name or "/ws" in s.name]


def test_with_no_endpoint_the_server_exports_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT no tracer exists: a /ws chat sent with a traceparent logs its
    `chat_done` with no trace ids (with traces on, that line carries them), and the SDK's default endpoint
    (4318 on this host) is never tried."""
    with serve_process(tmp_path, tiny_model_dir, workers=1) as server:
        server.wait_ready()

        async def chat() -> None:
            handshake = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
            async with open_socket(server.ws, additional_headers=handshake) as ws:
                await ws.send(json.dumps({"type": "chat", "id": "m1", "content": "hello", "params": GREEDY}))
                assert (await until_end(ws))[-1]["type"] == "done"

        asyncio.run(chat())
        lines = server.log_lines()
    (done,) = [json.loads(line) for line in lines if '"chat_done"' in line]
    assert done["id"] == "m1" and "trace_id" not in done and "span_id" not in done
    # Port 4318 itself, not a client's ephemeral port that holds those digits (`127.0.0.1:34318`).
    assert not [line for line in lines if "trace_id" in line or re.search(r":4318\b", line)]


def test_only_an_endpoint_instruments_the_app(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    settings = make_settings()
    app = create_app(settings)
    assert tracing.tracer() is None and not getattr(app, "_is_instrumented_by_opentelemetry", False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # never reached: no request
    try:
        app = create_app(settings)
        assert tracing.tracer() is not None and app._is_instrumented_by_opentelemetry  # type: ignore[attr-defined]
    finally:
        tracing.shutdown()
    assert tracing.tracer() is None


def test_serve_refuses_a_trace_protocol_it_cannot_speak_before_any_worker_starts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN_CHAT_", "OTEL_"))}
    env.update(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    env["QWEN_CHAT_STATE_DIR"] = str(tmp_path)
    serve = Path(sys.executable).with_name("qwen-chat")
    done = subprocess.run([str(serve), "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "qwen-chat: invalid configuration: OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the"
        " opentelemetry-exporter-otlp-proto-grpc package; or use http/protobuf (the collector's port 4318)"
    ]
