"""`POST /v1/responses` through the official `openai` SDK: `client.responses.create` and the
`responses.stream()` helper, which raises on events out of order.

A scripted Qwen3.5 reply (thinking, text, two XML tool calls) checks the output items and the streamed
events exactly, and that a function call and its output fed back reach the model through its template; the
real tiny model checks sampling to a token limit (`incomplete`) and a json_schema format through the grammar.
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
from tests.support.live_server import LiveServer, run_server
from tests.support.scripted_engine import XML_SCRIPT, FailingEngine, HangingEngine, ScriptedEngine
from tests.support.secret_volume import KEYS
from tests.support.stream_clients import outcomes
from tests.support.wsclient import bearer

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}


def sdk(server: LiveServer) -> OpenAI:
    return OpenAI(base_url=server.http + "/v1", api_key=KEYS["alice"], max_retries=0, timeout=60)


def _items(output: Any) -> list[tuple[str, Any]]:
    """Each output item as (type, what it says)."""
    said: list[tuple[str, Any]] = []
    for item in output:
        if item.type == "reasoning":
            said.append(("reasoning", "".join(part.text for part in item.content or [])))
        elif item.type == "message":
            said.append(("message", "".join(part.text for part in item.content)))
        else:
            said.append((item.type, (item.name, json.loads(item.arguments))))
    return said


def test_a_thinking_reply_with_tool_calls_comes_back_as_items_whole_and_streamed(
    make_settings: Callable[..., Any], tiny_qwen3_5_dir: Path
) -> None:
    settings = make_settings(model=str(tiny_qwen3_5_dir))
    engine = ScriptedEngine(settings, XML_SCRIPT)
    expected = [
        ("reasoning", "The user wants Rome."),
        ("message", "Let me look that up."),
        ("function_call", ("get_weather", {"city": "Rome", "days": 3})),
        ("function_call", ("get_time", {})),
    ]
    tools: Any = [WEATHER, TIME]
    with run_server(create_app(settings, engine=engine), settings) as server, sdk(server) as client:
        whole = client.responses.create(
            model=settings.model_name, input="Weather in Rome?", tools=tools, store=False
        )
        assert whole.object == "response" and whole.status == "completed"
        assert _items(whole.output) == expected
        assert whole.output_text == "Let me look that up."
        assert whole.usage is not None and whole.usage.output_tokens == len(XML_SCRIPT)
        assert whole.usage.output_tokens_details.reasoning_tokens == 1  # the first delta ends the thinking

        with client.responses.stream(model=settings.model_name, input="Weather in Rome?", tools=tools) as s:
            events: list[Any] = list(
                s
            )  # the helper raises on an item's event before its item, or an id changed
            final = s.get_final_response()
        assert _items(final.output) == expected
        assert [e.sequence_number for e in events] == list(range(len(events)))
        kinds = [e.type for e in events]
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
        per_item = [kinds.count(k) for k in ("response.output_item.added", "response.output_item.done")]
        assert per_item == [4, 4]
        assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == expected[0][1]
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == expected[1][1]
        added = {e.output_index: e.item.id for e in events if e.type == "response.output_item.added"}
        for event in events:  # every delta names its item and its place
            if event.type.endswith(".delta"):
                assert added[event.output_index] == event.item_id

        # The calls and their outputs go back as input (no stored state): the model sees the results through
        # its template, after its own calls.
        seen = len(engine.prompts_seen)
        outputs: Any = [
            {"type": "function_call_output", "call_id": item.call_id, "output": f"result of {item.name}"}
            for item in final.output
            if item.type == "function_call"
        ]
        turn: Any = [{"role": "user", "content": "Weather in Rome?"}, *final.output, *outputs]
        client.responses.create(model=settings.model_name, input=turn, tools=tools)
        prompt = engine.prompts.tokenizer.decode(engine.prompts_seen[seen])
        assert prompt.index("<function=get_weather>") < prompt.index("result of get_weather")
        assert "result of get_time" in prompt

        # A conversation the template refuses (Qwen3.5's: no user query) is the client's to change: a 400.
        lone: Any = [{"type": "function_call_output", "call_id": "c", "output": "sunny"}]
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model=settings.model_name, input=lone)
        assert refused.value.body["param"] == "input"  # type: ignore[index]
        assert "No user query found" in refused.value.body["message"]  # type: ignore[index]

        # Effort `none` turns Qwen's thinking off: the template closes an empty thinking block for it.
        client.responses.create(model=settings.model_name, input="Hi", reasoning={"effort": "none"})
        assert engine.prompts.tokenizer.decode(engine.prompts_seen[-1]).endswith("</think>\n\n")


def test_the_real_model_samples_to_its_limit_and_writes_the_asked_json(server: LiveServer) -> None:
    model = server.service.settings.model_name
    with sdk(server) as client:
        short = client.responses.create(
            model=model, input="Tell me a story", instructions="Be brief.", max_output_tokens=5
        )
        assert short.status == "incomplete" and short.incomplete_details is not None
        assert short.incomplete_details.reason == "max_output_tokens"
        assert short.usage is not None and short.usage.output_tokens == 5
        assert short.instructions == "Be brief." and short.max_output_tokens == 5
        # The same prompt's tokens as chat completions counts them: instructions are the system turn.
        chat = client.chat.completions.create(
            model=model,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Tell me a story"},
            ],
            max_tokens=1,
        )
        assert chat.usage is not None and short.usage.input_tokens == chat.usage.prompt_tokens

        with client.responses.stream(model=model, input="Hi", max_output_tokens=8) as s:
            events = list[Any](s)
        # Ended at its limit: the last event is `response.incomplete`, as OpenAI's, with the text streamed.
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert events[-1].type == "response.incomplete" and events[-1].response.output_text == text

        schema = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        }
        fmt: Any = {"type": "json_schema", "name": "verdict", "schema": schema, "strict": True}
        answer = client.responses.create(model=model, input="ok?", text={"format": fmt}, max_output_tokens=32)
        assert answer.status == "completed"
        assert isinstance(json.loads(answer.output_text)["ok"], bool)


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"store": True}, "store", "stores no responses"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "stores no responses"),
        ({"tools": [{"type": "web_search"}]}, "tools.0", "'web_search' is not served"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "item_reference"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input", "input_image"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input", "no message"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "["}]},
            "input.0",
            "JSON",
        ),
        (
            {"text": {"format": {"type": "json_schema", "schema": {"type": "nonsense"}}}},
            "text.format",
            "nonsense",
        ),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", "none"),
        ({"background": True}, "background", "Extra inputs"),
    ],
)
def test_what_is_not_served_is_a_400_naming_it(
    server: LiveServer, extra: dict[str, Any], param: str, words: str
) -> None:
    body = {"model": server.service.settings.model_name, "input": "hi", **extra}
    reply = httpx.post(server.http + "/v1/responses", json=body, headers=bearer(), timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"] or "").startswith(param) and words in error["message"], error


def test_a_stream_whose_engine_fails_ends_with_an_error_event_and_a_failed_response(
    make_settings: Callable[..., Any],
) -> None:
    settings = make_settings()
    app = create_app(settings, engine=FailingEngine(settings))
    with (
        run_server(app, settings) as server,
        sdk(server) as client,
        client.responses.stream(model=settings.model_name, input="hello") as s,
    ):
        events: list[Any] = list(s)
    kinds = [e.type for e in events]
    assert kinds[-2:] == ["error", "response.failed"], kinds
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.message == "the model failed to generate a reply"


def test_a_reply_past_its_deadline_fails_streamed_and_is_a_504_whole(
    make_settings: Callable[..., Any],
) -> None:
    settings = make_settings()
    deadline = {"X-Request-Timeout": "0.2"}
    with (
        run_server(create_app(settings, engine=HangingEngine(settings)), settings) as server,
        sdk(server) as client,
    ):
        before = outcomes(server.http)
        with client.responses.stream(model=settings.model_name, input="hi", extra_headers=deadline) as s:
            events: list[Any] = list(s)
        assert [e.type for e in events][-2:] == ["error", "response.failed"]
        assert events[-2].code == "timeout" and "deadline of 0.2 s" in events[-2].message
        assert _items(events[-1].response.output) == [("message", "Let")], "what it had is kept"
        whole = httpx.post(
            server.http + "/v1/responses",
            json={"model": settings.model_name, "input": "hi"},
            headers={**bearer(), **deadline},
            timeout=30,
        )
        assert whole.status_code == 504 and whole.json()["error"]["code"] == "timeout"
        counted = outcomes(server.http)
    assert counted[("openai", "timeout")] - before[("openai", "timeout")] == 2, "each counted as a timeout"
