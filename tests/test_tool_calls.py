"""Tool calls through the official `openai` SDK and /ws.

A stand-in engine replays a scripted Qwen reply (text, then a `<tool_call>` block split across deltas) so the
parser and the streamed deltas are checked exactly, in Qwen2.5's Hermes JSON and in Qwen3.5's XML format (the
tiny qwen3_5 model's template); the real tiny models check that tools reach it through
its chat template and that `tool_choice` `required` or a named function always comes back as a call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from qwen_chat.app import create_app
from qwen_chat.engine.model.prompts import tool_format
from tests.support.live_server import LiveServer, run_server
from tests.support.scripted_engine import SCRIPT, XML_SCRIPT, FailingEngine, ScriptedEngine
from tests.support.secret_volume import KEYS
from tests.support.wsclient import bearer, open_socket, until_end

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


def sdk(server: LiveServer) -> OpenAI:
    return OpenAI(base_url=server.http + "/v1", api_key=KEYS["alice"], max_retries=0, timeout=60)


def test_a_scripted_tool_call_comes_back_whole_and_streamed(make_settings: Callable[..., Any]) -> None:
    settings = make_settings()
    engine = ScriptedEngine(settings)
    messages: Any = [{"role": "user", "content": "Weather in Rome?"}]
    with run_server(create_app(settings, engine=engine), settings) as server, sdk(server) as client:
        plain = client.chat.completions.create(model=settings.model_name, messages=messages, tools=[WEATHER])
        choice = plain.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Let me look that up."
        [call] = choice.message.tool_calls or []
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Rome"}

        chunks = list(
            client.chat.completions.create(
                model=settings.model_name, messages=messages, tools=[WEATHER], stream=True
            )
        )
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert content == "Let me look that up."
        assert not any("<tool" in (c.choices[0].delta.content or "") for c in chunks), "no marker leaked"
        parts = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
        # As the SDK's helpers assemble them: the first delta of a call has its id and name.
        assert (parts[0].id or "").startswith("call_") and parts[0].function.name == "get_weather"
        assert {p.index for p in parts} == {0}
        assert json.loads("".join(p.function.arguments or "" for p in parts)) == {"city": "Rome"}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"

        # The call and its result go back as history, through the template (the engine sees them).
        follow_up: Any = [
            *messages,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
        ]
        client.chat.completions.create(model=settings.model_name, messages=follow_up, tools=[WEATHER])
        tokenizer = engine.prompts.tokenizer
        rendered = tokenizer.decode(engine.prompts_seen[-1])
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>' in rendered
        assert '<tool_response>\n{"sky": "clear"}\n</tool_response>' in rendered
        assert '"name": "get_weather"' in tokenizer.decode(engine.prompts_seen[0]), "tools in the system turn"

        # Without tools, or with tool_choice none, the same text is just text.
        bare = client.chat.completions.create(model=settings.model_name, messages=messages)
        assert bare.choices[0].message.content == "".join(SCRIPT) and bare.choices[0].finish_reason == "stop"
        none = client.chat.completions.create(
            model=settings.model_name, messages=messages, tools=[WEATHER], tool_choice="none"
        )
        assert none.choices[0].message.tool_calls is None
        assert '"get_weather"' not in tokenizer.decode(engine.prompts_seen[-1]), (
            "tool_choice none lists no tools"
        )


def test_forced_tool_calls_on_the_real_model(server: LiveServer) -> None:
    with sdk(server) as client:
        _forced_calls_are_calls(client, server.service.settings.model_name, [WEATHER, TIME], 64, seeds=3)


def _forced_calls_are_calls(client: OpenAI, model: str, tools: Any, max_tokens: int, seeds: int) -> None:
    """A named function is called with arguments its schema allows, whole; `required` calls one, streamed."""
    messages: Any = [{"role": "user", "content": "What is the weather?"}]
    for seed in range(seeds):
        named = client.chat.completions.create(
            model=model,
            messages=messages,
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=max_tokens,
            seed=seed,
        )
        assert named.choices[0].finish_reason == "tool_calls", named.choices[0].message
        [call] = named.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"
        arguments = json.loads(call.function.arguments)
        assert arguments["city"] in {"Paris", "Rome"} and isinstance(arguments.get("days", 0), int)
    required = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=max_tokens,
        stream=True,
    )
    parts = [d for c in required for d in (c.choices[0].delta.tool_calls if c.choices else None) or []]
    assert parts and parts[0].function.name in {"get_weather", "get_time"}
    assert isinstance(json.loads("".join(p.function.arguments or "" for p in parts)), dict)


@pytest.mark.anyio
async def test_ws_tools_give_tool_call_frames_and_take_results(server: LiveServer) -> None:
    forced = {"type": "function", "function": {"name": "get_weather"}}
    async with open_socket(server.ws) as ws:
        chat = {"type": "chat", "id": "w", "content": "Weather?", "tools": [WEATHER], "tool_choice": forced}
        await ws.send(json.dumps({**chat, "params": {"max_new_tokens": 64}}))
        frames = await until_end(ws)
        calls = [f for f in frames if f["type"] == "tool_call"]
        assert len(calls) == 1 and calls[0]["id"] == "w"
        call = calls[0]["call"]
        assert call["name"] == "get_weather" and json.loads(call["arguments"])["city"] in {"Paris", "Rome"}
        assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "tool_calls"
        # The connection's chat remembers the call; the results continue it (tools are sent each turn, as
        # on OpenAI's API).
        results = [{"tool_call_id": call["id"], "content": "sunny"}]
        await ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "id": "r",
                    "tool_results": results,
                    "tools": [WEATHER],
                    "params": {"max_new_tokens": 4},
                }
            )
        )
        after = await until_end(ws)
        assert (
            after[-1]["type"] == "done"
            and after[-1]["usage"]["prompt_tokens"] > frames[-1]["usage"]["prompt_tokens"]
        )
        # Results with no call to answer are a bad request, not a crash.
        await ws.send(json.dumps({"type": "chat", "id": "x", "tool_results": results}))
        await ws.send(json.dumps({"type": "reset"}))
        await ws.send(json.dumps({"type": "chat", "id": "y", "tool_results": results}))
        errors = [f for f in [*(await until_end(ws)), *(await until_end(ws))] if f["type"] == "error"]
        assert [e["id"] for e in errors][-1] == "y" and errors[-1]["code"] == "bad_request"
        # params.response_format: the reply is JSON of the schema, on /ws too. No other property is allowed,
        # so the reply is `{"ok": ...}` and ends: with extra properties the sampled tiny model could write
        # keys until max_new_tokens (a flake seen twice).
        schema = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        }
        params = {
            "max_new_tokens": 32,
            "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
        }
        await ws.send(json.dumps({"type": "chat", "id": "j", "content": "ok?", "params": params}))
        frames = await until_end(ws)
        assert frames[-1]["finish_reason"] == "stop"
        assert isinstance(json.loads("".join(f["text"] for f in frames if f["type"] == "token"))["ok"], bool)


def test_a_failed_whole_reply_is_a_500_in_openais_shape_without_the_engines_words(
    make_settings: Callable[..., Any],
) -> None:
    settings = make_settings()
    messages: Any = [{"role": "user", "content": "hello"}]
    with run_server(create_app(settings, engine=FailingEngine(settings)), settings) as server:
        with sdk(server) as client, pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model=settings.model_name, messages=messages)
        assert failed.value.status_code == 500
        assert failed.value.body == {
            "message": "the model failed to generate a reply",
            "type": "server_error",
            "param": None,
            "code": "internal",
        }
        seed = httpx.post(server.http + "/chat", json={"prompt": "hello"}, headers=bearer(), timeout=30)
        assert seed.status_code == 500 and seed.json()["error"]["code"] == "internal"
        assert "secret" not in seed.text


WEATHER_DAYS = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}


def _xml_calls_whole_and_streamed(client: OpenAI, model: str, messages: Any, expected: Any) -> Any:
    """The scripted Qwen3.5 reply read back whole and streamed: thinking, text and both typed calls."""
    plain = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_DAYS, TIME])
    choice = plain.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look that up."
    assert getattr(choice.message, "reasoning_content", None) == "The user wants Rome."
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == expected
    assert len({c.id for c in calls}) == 2

    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER_DAYS, TIME], stream=True
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Let me look that up."
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "The user wants Rome."
    assert not any("<" in (d.content or "") for d in deltas), "no marker leaked"
    parts = [p for d in deltas for p in d.tool_calls or []]
    streamed = [
        (
            next(p.function.name for p in parts if p.index == i and p.function and p.function.name),
            json.loads("".join(p.function.arguments or "" for p in parts if p.index == i and p.function)),
        )
        for i in sorted({p.index for p in parts})
    ]
    assert streamed == expected and chunks[-1].choices[0].finish_reason == "tool_calls"
    return calls


def test_qwen3_5_xml_tool_calls_come_back_whole_and_streamed(
    make_settings: Callable[..., Any], tiny_qwen3_5_dir: Path
) -> None:
    settings = make_settings(model=str(tiny_qwen3_5_dir))
    engine = ScriptedEngine(settings, XML_SCRIPT)
    messages: Any = [{"role": "user", "content": "Weather in Rome?"}]
    expected = [("get_weather", {"city": "Rome", "days": 3}), ("get_time", {})]
    with run_server(create_app(settings, engine=engine), settings) as server, sdk(server) as client:
        # As scripted (markers and values cut inside), then one character a delta: every marker split at
        # every position.
        for script in (XML_SCRIPT, list("".join(XML_SCRIPT))):
            engine.script = script
            calls = _xml_calls_whole_and_streamed(client, settings.model_name, messages, expected)
        # The calls go back as history in the model's own format; the tools are listed with its instructions.
        follow_up: Any = [
            *messages,
            {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
            {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
            {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"},
        ]
        client.chat.completions.create(model=settings.model_name, messages=follow_up, tools=[WEATHER_DAYS])
        tokenizer = engine.prompts.tokenizer
        rendered = tokenizer.decode(engine.prompts_seen[-1])
        call_block = "<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n"
        assert call_block + "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>" in rendered
        assert "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nnoon" in rendered
        assert "<function=example_function_name>" in tokenizer.decode(engine.prompts_seen[0])


def test_forced_tool_calls_on_the_tiny_qwen3_5_are_in_its_own_format(
    serve: Callable[..., Any], tiny_qwen3_5_dir: Path
) -> None:
    with serve(model=str(tiny_qwen3_5_dir)) as server, sdk(server) as client:
        prompts = server.service.engine.prompts
        assert tool_format(prompts.tokenizer.chat_template, prompts.family) == "xml"
        # Its XML call takes about 50 of the tiny model's tokens before the first value.
        _forced_calls_are_calls(
            client, server.service.settings.model_name, [WEATHER_DAYS, TIME], 200, seeds=2
        )


@pytest.mark.anyio
async def test_ws_keeps_each_replys_thinking_where_the_template_shows_it(
    make_settings: Callable[..., Any], tiny_qwen3_5_dir: Path
) -> None:
    """A Qwen3.5 tool loop on /ws: the reply's thinking is in the prompt that carries the tool results (it
    comes after the last user turn: Qwen3's rule, so the model goes on from its own reasoning), gone at the
    next user turn, and back for every turn with `preserve_thinking` (Qwen3.6's switch)."""
    settings = make_settings(model=str(tiny_qwen3_5_dir))
    engine = ScriptedEngine(settings, XML_SCRIPT)
    tools = [WEATHER_DAYS, TIME]
    with run_server(create_app(settings, engine=engine), settings) as server:
        async with open_socket(server.ws) as ws:
            await ws.send(json.dumps({"type": "chat", "content": "Weather in Rome?", "tools": tools}))
            calls = [f["call"] for f in await until_end(ws) if f["type"] == "tool_call"]
            results = [{"tool_call_id": call["id"], "content": "sunny"} for call in calls]
            await ws.send(json.dumps({"type": "chat", "tool_results": results, "tools": tools}))
            await until_end(ws)
            await ws.send(json.dumps({"type": "chat", "content": "And tomorrow?", "tools": tools}))
            await until_end(ws)
            keep = {"type": "chat", "content": "And after?", "tools": tools, "preserve_thinking": True}
            await ws.send(json.dumps(keep))
            assert (await until_end(ws))[-1]["type"] == "done"
    decode = engine.prompts.tokenizer.decode
    shown = [
        decode(prompt).count("<think>\nThe user wants Rome.\n</think>") for prompt in engine.prompts_seen
    ]
    assert shown == [0, 1, 0, 3]
