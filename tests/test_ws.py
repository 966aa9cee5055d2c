"""/ws end to end: a real uvicorn serving the tiny model, a real `websockets` client."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from qwen_chat.auth.identity import PROTOCOL, encode_bearer_subprotocol
from tests.support.live_server import LiveServer, wait_until
from tests.support.secret_volume import KEYS
from tests.support.wsclient import chat, open_socket, receive, reply_text, until_end

pytestmark = pytest.mark.anyio


async def test_reply_streams_in_increments_and_done_reports_usage(server: LiveServer) -> None:
    async with open_socket(server.ws) as ws:
        await ws.send(
            json.dumps({"type": "chat", "content": "hello", "id": "m1", "params": {"max_new_tokens": 40}})
        )
        frames = []
        arrivals = []
        while not frames or frames[-1]["type"] not in {"done", "error"}:
            frames.append(await receive(ws))
            arrivals.append(time.perf_counter())
    assert frames[0] == {"type": "start", "id": "m1", "queue_position": 0}
    tokens = [f for f in frames if f["type"] == "token"]
    assert len(tokens) >= 5, "the reply should arrive as many token frames"
    token_times = [t for f, t in zip(frames, arrivals, strict=True) if f["type"] == "token"]
    assert token_times[-1] > token_times[0], "tokens should arrive over time, not all at once"
    assert all(f["id"] == "m1" for f in frames)
    done = frames[-1]
    assert done["type"] == "done"
    assert done["finish_reason"] in {"length", "stop"}
    assert done["usage"]["prompt_tokens"] > 0
    assert done["usage"]["completion_tokens"] == 40 or done["finish_reason"] == "stop"
    assert done["timing"]["ttft_ms"] > 0
    assert done["timing"]["tokens_per_second"] > 0
    assert reply_text(frames) == "".join(f["text"] for f in tokens) != ""


async def test_second_turn_sees_the_first_and_reset_forgets(server: LiveServer) -> None:
    async with open_socket(server.ws) as ws:
        first = (await chat(ws, "my name is Ada", params={"max_new_tokens": 8}))[-1]
        second = (await chat(ws, "what is my name", params={"max_new_tokens": 8}))[-1]
        # The second prompt holds the first exchange: its question, the reply, and the new question.
        assert (
            second["usage"]["prompt_tokens"]
            > first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
        )
        await ws.send(json.dumps({"type": "reset"}))
        third = (await chat(ws, "what is my name", params={"max_new_tokens": 8}))[-1]
        assert third["usage"]["prompt_tokens"] < second["usage"]["prompt_tokens"]


async def test_stateless_messages_do_not_touch_the_conversation(server: LiveServer) -> None:
    async with open_socket(server.ws) as ws:
        messages = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ]
        await ws.send(json.dumps({"type": "chat", "messages": messages, "params": {"max_new_tokens": 4}}))
        stateless = (await until_end(ws))[-1]
        assert stateless["type"] == "done"
        fresh = (await chat(ws, "again", params={"max_new_tokens": 4}))[-1]
        assert fresh["usage"]["prompt_tokens"] < stateless["usage"]["prompt_tokens"]


async def test_plain_text_frame_is_a_chat_message(server: LiveServer) -> None:
    async with open_socket(server.ws) as ws:
        await ws.send("hello from a seed client")
        frames = await until_end(ws)
    assert frames[0]["type"] == "start" and frames[0]["id"] is None
    assert frames[-1]["type"] == "done"


async def test_cancel_ends_the_reply_early(server: LiveServer) -> None:
    async with open_socket(server.ws) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "content": "tell me a long story",
                    "id": "c",
                    "params": {"max_new_tokens": 512, "temperature": 0},
                }
            )
        )
        assert (await receive(ws))["type"] == "start"
        assert (await receive(ws))["type"] == "token"
        await ws.send(json.dumps({"type": "cancel", "id": "c"}))
        frames = await until_end(ws)
        done = frames[-1]
        assert done["type"] == "done" and done["id"] == "c"
        assert done["finish_reason"] == "cancelled"
        assert done["usage"]["completion_tokens"] < 512
        # The connection is still usable.
        assert (await chat(ws, "and now?", params={"max_new_tokens": 3}))[-1]["type"] == "done"


async def test_disconnect_mid_stream_stops_generation(server: LiveServer) -> None:
    async with open_socket(server.ws) as ws:
        await ws.send(
            json.dumps(
                {"type": "chat", "content": "a long one", "params": {"max_new_tokens": 512, "temperature": 0}}
            )
        )
        await receive(ws)
        await receive(ws)
        assert server.engine.stats.running == 1
    # 512 tokens take over a second on this model; a freed slot comes much sooner.
    started = time.monotonic()
    await asyncio.to_thread(wait_until, lambda: server.engine.stats.running == 0, 5.0, 0.01)
    assert time.monotonic() - started < 1.0


async def test_second_chat_while_streaming_is_busy(server: LiveServer) -> None:
    async with open_socket(server.ws) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "content": "first",
                    "id": "a",
                    "params": {"max_new_tokens": 300, "temperature": 0},
                }
            )
        )
        assert (await receive(ws))["type"] == "start"
        await ws.send(json.dumps({"type": "chat", "content": "second", "id": "b"}))
        frames = await until_end(ws)
        busy = [f for f in frames if f.get("id") == "b"]
        assert busy and busy[0]["type"] == "error" and busy[0]["code"] == "busy"
        rest = await until_end(ws) if frames[-1].get("id") == "b" else frames
        assert rest[-1]["type"] == "done" and rest[-1]["id"] == "a"


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ('{"type": "chat", "content": ', "JSON"),
        ('{"type": "dance"}', "dance"),
        ('{"content": "no type"}', "type"),
        ('{"type": "chat", "content": "x", "params": {"temperature": "hot"}}', "params.temperature"),
        ('{"type": "chat", "content": "x", "params": {"temperature": 5}}', "params.temperature"),
        ('{"type": "chat", "content": "x", "params": {"top_p": 0}}', "params.top_p"),
        ('{"type": "chat", "content": "x", "params": {"max_new_tokens": 0}}', "params.max_new_tokens"),
        ('{"type": "chat", "content": "x", "params": {"max_new_tokens": 100000}}', "params.max_new_tokens"),
        ('{"type": "chat", "content": "x", "params": {"max_new_tokens": true}}', "params.max_new_tokens"),
        ('{"type": "chat", "content": "x", "params": {"seed": -1}}', "params.seed"),
        ('{"type": "chat", "content": "x", "params": {"top_a": 5}}', "params.top_a"),
        ('{"type": "chat", "content": "x", "params": {"presence_penalty": 2.5}}', "params.presence_penalty"),
        ('{"type": "chat", "content": 42}', "content"),
        ('{"type": "chat", "content": "   "}', "empty"),
        ('{"type": "chat"}', "content"),
        ('{"type": "chat", "messages": []}', "messages"),
        ('{"type": "chat", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
        (
            '{"type": "chat", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}',
            "user",
        ),
        ("   ", "empty"),
    ],
)
async def test_bad_frames_get_bad_request_and_the_connection_stays_usable(
    server: LiveServer, frame: str, field: str
) -> None:
    async with open_socket(server.ws) as ws:
        await ws.send(frame)
        error = await receive(ws)
        assert error["type"] == "error" and error["code"] == "bad_request"
        assert field in error["message"]
        assert (await chat(ws, "still there?", params={"max_new_tokens": 2}))[-1]["type"] == "done"


async def test_bad_frame_echoes_its_id(server: LiveServer) -> None:
    async with open_socket(server.ws) as ws:
        await ws.send(json.dumps({"type": "chat", "id": "x1", "content": "x", "params": {"top_p": 9}}))
        error = await receive(ws)
    assert error["id"] == "x1" and error["code"] == "bad_request"


async def test_oversized_frame_closes_1009_and_others_keep_serving(serve) -> None:  # type: ignore[no-untyped-def]
    with serve(max_message_bytes=4096) as live:
        async with open_socket(live.ws) as bystander, open_socket(live.ws) as ws:
            await ws.send(json.dumps({"type": "chat", "content": "x" * 10_000}))
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            assert (await chat(bystander, "still fine?", params={"max_new_tokens": 2}))[-1]["type"] == "done"


async def test_binary_frame_closes_1003(server: LiveServer) -> None:
    async with open_socket(server.ws) as ws:
        await ws.send(b"\x00\x01binary")
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003


async def test_single_message_over_the_budget_is_too_long(serve) -> None:  # type: ignore[no-untyped-def]
    with serve(max_input_tokens=64) as live:
        async with open_socket(live.ws) as ws:
            error = (await chat(ws, "word " * 200, id="big"))[-1]
            assert error == {"type": "error", "id": "big", "code": "too_long", "message": error["message"]}
            assert "64" in error["message"]
            assert (await chat(ws, "short", params={"max_new_tokens": 2}))[-1]["type"] == "done"


async def test_oldest_turns_are_dropped_when_the_conversation_outgrows_the_budget(serve) -> None:  # type: ignore[no-untyped-def]
    with serve(max_input_tokens=120) as live:
        async with open_socket(live.ws) as ws:
            prompts = []
            for turn in range(8):
                done = (await chat(ws, f"turn {turn} " + "hello " * 6, params={"max_new_tokens": 10}))[-1]
                assert done["type"] == "done", done
                prompts.append(done["usage"]["prompt_tokens"])
            assert max(prompts) <= 120
            assert prompts[-1] < prompts[0] + 7 * 25, "old turns must have been dropped"


async def test_max_new_tokens_and_seed_are_honoured(server: LiveServer) -> None:
    async with open_socket(server.ws) as ws:
        params = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 0.9, "seed": 7}
        one = await chat(ws, "same prompt", params=params)
        await ws.send(json.dumps({"type": "reset"}))
        two = await chat(ws, "same prompt", params=params)
        await ws.send(json.dumps({"type": "reset"}))
        other = await chat(ws, "same prompt", params={**params, "seed": 8})
    assert one[-1]["usage"]["completion_tokens"] == 12
    assert reply_text(one) == reply_text(two)
    assert reply_text(one) != reply_text(other)


# Authentication and origin.


async def test_wrong_missing_and_foreign_origin_never_upgrade(server: LiveServer) -> None:
    cases = [
        ({"additional_headers": {"Authorization": "Bearer not-a-key"}}, None, 401),
        ({}, None, 401),
        ({"additional_headers": {"Authorization": "Basic abc"}}, None, 401),
        ({"origin": "https://evil.example"}, "alice", 403),
    ]
    for kwargs, user, status in cases:
        with pytest.raises(InvalidStatus) as refused:
            async with open_socket(server.ws, user=user, **kwargs):
                pass
        assert refused.value.response.status_code == status
        body = refused.value.response.body.decode()
        assert KEYS["alice"] not in body and "not-a-key" not in body


async def test_same_origin_and_browser_subprotocol_work(server: LiveServer) -> None:
    protocols = [PROTOCOL, encode_bearer_subprotocol(KEYS["bob"])]
    origin = f"http://127.0.0.1:{server.port}"
    async with open_socket(server.ws, user=None, subprotocols=protocols, origin=origin) as ws:
        assert ws.subprotocol == PROTOCOL
        assert (await chat(ws, "hi", params={"max_new_tokens": 2}))[-1]["type"] == "done"
    bad = [PROTOCOL, encode_bearer_subprotocol("wrong")]
    with pytest.raises(InvalidStatus) as refused:
        async with open_socket(server.ws, user=None, subprotocols=bad, origin=origin):
            pass
    assert refused.value.response.status_code == 401


async def test_allowed_origins_setting(serve) -> None:  # type: ignore[no-untyped-def]
    with serve(allowed_origins=["https://chat.example.com"]) as live:
        async with open_socket(live.ws, origin="https://chat.example.com") as ws:
            assert (await chat(ws, "hi", params={"max_new_tokens": 1}))[-1]["type"] == "done"
        with pytest.raises(InvalidStatus) as refused:
            async with open_socket(live.ws, origin=f"http://127.0.0.1:{live.port}"):
                pass
        assert refused.value.response.status_code == 403


async def test_query_auth_only_when_enabled(serve) -> None:  # type: ignore[no-untyped-def]
    query = f"?userid=alice&secret={KEYS['alice']}"
    with serve() as live:
        with pytest.raises(InvalidStatus) as refused:
            async with open_socket(live.ws + query, user=None):
                pass
        assert refused.value.response.status_code == 401
    with serve(allow_query_auth=True) as live:
        async with open_socket(live.ws + query, user=None) as ws:
            assert (await chat(ws, "hi", params={"max_new_tokens": 1}))[-1]["type"] == "done"
        with pytest.raises(InvalidStatus):
            async with open_socket(live.ws + "?userid=alice&secret=wrong", user=None):
                pass
        with pytest.raises(InvalidStatus):
            async with open_socket(live.ws + f"?userid=bob&secret={KEYS['alice']}", user=None):
                pass


async def test_rotated_key_works_and_old_one_fails_without_restart(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.secret_volume import SecretVolume

    volume = SecretVolume(tmp_path / "rotating")
    volume.write({"alice": "old-key-aaaaaaaaaaaa"})
    with serve(credentials_dir=volume.root) as live:
        headers = {"Authorization": "Bearer old-key-aaaaaaaaaaaa"}
        async with open_socket(live.ws, user=None, additional_headers=headers) as ws:
            assert (await chat(ws, "hi", params={"max_new_tokens": 1}))[-1]["type"] == "done"
            volume.write({"alice": "new-key-bbbbbbbbbbbb"})
            # The open connection with the revoked key is closed with 1008 (policy).
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws, timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        with pytest.raises(InvalidStatus):
            async with open_socket(live.ws, user=None, additional_headers=headers):
                pass
        new = {"Authorization": "Bearer new-key-bbbbbbbbbbbb"}
        async with open_socket(live.ws, user=None, additional_headers=new) as ws:
            assert (await chat(ws, "hi", params={"max_new_tokens": 1}))[-1]["type"] == "done"


async def test_an_unexpected_server_error_costs_one_message_not_the_connection(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qwen_chat.ws.session import ChatSession

    original = ChatSession.handle_text

    async def flaky(self: ChatSession, text: str) -> None:
        if text == "explode":
            raise ValueError("/secret/path/in/a/traceback")
        await original(self, text)

    monkeypatch.setattr(ChatSession, "handle_text", flaky)
    async with open_socket(server.ws) as ws:
        await ws.send("explode")
        error = await receive(ws)
        assert error["code"] == "internal" and "/secret/path" not in error["message"]
        assert (await chat(ws, "fine?", params={"max_new_tokens": 2}))[-1]["type"] == "done"
