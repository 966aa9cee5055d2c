"""vLLM's /tokenize and /detokenize on the real tiny model: counts equal what the chat and completions report."""

from __future__ import annotations

from typing import Any

import httpx
from openai import OpenAI

from tests.support.live_server import LiveServer
from tests.support.secret_volume import KEYS

AUTH = {"Authorization": f"Bearer {KEYS['alice']}"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tokenize_counts_what_the_chat_and_completions_report_and_detokenize_reverses_it(
    server: LiveServer,
) -> None:
    model = server.service.settings.model_name
    client = OpenAI(base_url=server.http + "/v1", api_key=KEYS["alice"], max_retries=0, timeout=60)
    messages: Any = [
        {"role": "system", "content": "Be brief. <|im_end|> is text here."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    chat = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], max_tokens=1)
    body = {"model": model, "messages": messages, "tools": [WEATHER]}
    counted = httpx.post(server.http + "/tokenize", json=body, headers=AUTH).json()
    assert chat.usage is not None and counted["count"] == chat.usage.prompt_tokens == len(counted["tokens"])
    assert counted["max_model_len"] == 2048 and counted["token_strs"] is None
    without_tools = httpx.post(server.http + "/tokenize", json={"messages": messages}, headers=AUTH).json()
    assert without_tools["count"] < counted["count"], "the tools are listed in the prompt"

    text = "The capital of France is"
    completion = client.completions.create(model=model, prompt=text, max_tokens=1)
    body = {"prompt": text, "return_token_strs": True, "add_special_tokens": True}
    counted = httpx.post(server.http + "/tokenize", json=body, headers=AUTH).json()
    assert completion.usage is not None and counted["count"] == completion.usage.prompt_tokens
    assert len(counted["token_strs"]) == counted["count"]
    back = httpx.post(server.http + "/detokenize", json={"tokens": counted["tokens"]}, headers=AUTH)
    assert back.json() == {"prompt": text}


def test_tokenizer_endpoints_need_the_key_and_name_what_is_wrong(server: LiveServer) -> None:
    assert httpx.post(server.http + "/tokenize", json={"prompt": "x"}).status_code == 401
    assert httpx.post(server.http + "/detokenize", json={"tokens": [1]}).status_code == 401
    cases = [
        ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "prompt"),
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "x", "model": "other"}, "model"),
        ("/tokenize", {"prompt": "x", "echo": True}, "echo"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
    ]
    for path, body, field in cases:
        answer = httpx.post(server.http + path, json=body, headers=AUTH)
        assert answer.status_code in (400, 404), (body, answer.text)
        error = answer.json()["error"]
        assert error["param"] == field or field in error["message"], (body, error)


def test_render_gives_the_ids_the_chat_and_the_completion_are_prefilled_with(server: LiveServer) -> None:
    """vLLM's render endpoints, as a prefix-aware router calls them: the ids equal what `usage` counts and
    what /tokenize gives, in vLLM's shapes (one object for a chat, a list for completions)."""
    model = server.service.settings.model_name
    client = OpenAI(base_url=server.http + "/v1", api_key=KEYS["alice"], max_retries=0, timeout=60)
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    body = {
        "model": model,
        "messages": messages,
        "tools": [WEATHER],
        "chat_template_kwargs": {"enable_thinking": False},
    }
    rendered = httpx.post(server.http + "/v1/chat/completions/render", json=body, headers=AUTH)
    assert rendered.status_code == 200, rendered.text
    assert set(rendered.json()) == {"request_id", "model", "token_ids"} and rendered.json()["model"] == model
    ids = rendered.json()["token_ids"]
    chat = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER],
        max_tokens=1,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert chat.usage is not None and len(ids) == chat.usage.prompt_tokens
    assert ids == httpx.post(server.http + "/tokenize", json=body, headers=AUTH).json()["tokens"]

    text = "The capital of France is"
    rendered = httpx.post(
        server.http + "/v1/completions/render", json={"model": model, "prompt": [text]}, headers=AUTH
    )
    completion = client.completions.create(model=model, prompt=text, max_tokens=1)
    (one,) = rendered.json()
    assert completion.usage is not None and len(one["token_ids"]) == completion.usage.prompt_tokens
    assert (
        one["token_ids"]
        == httpx.post(server.http + "/tokenize", json={"prompt": text}, headers=AUTH).json()["tokens"]
    )

    assert (
        httpx.post(server.http + "/v1/completions/render", json={"model": model, "prompt": text}).status_code
        == 401
    )
    long = {"model": model, "prompt": " ".join(["word"] * 3000)}
    too_long = httpx.post(server.http + "/v1/completions/render", json=long, headers=AUTH)
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "prompt", too_long.text
    wrong = httpx.post(
        server.http + "/v1/chat/completions/render", json={**body, "model": "other"}, headers=AUTH
    )
    assert wrong.status_code in (400, 404) and wrong.json()["error"]["param"] == "model"
