"""The OpenAI fields beyond plain chat, on the real tiny model through the official `openai` SDK: structured
outputs (the grammar mask alone makes random weights answer valid JSON), `/v1/completions`, logprobs, and a
400 naming every field the service does not support."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import torch
from openai import AsyncOpenAI, OpenAI

from tests.support.live_server import LiveServer
from tests.support.schemas import BOUNDED
from tests.support.secret_volume import KEYS

Serve = Callable[..., AbstractContextManager[LiveServer]]
AUTH = {"Authorization": f"Bearer {KEYS['alice']}"}
SCHEMA = BOUNDED
FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}}


def sdk(server: LiveServer) -> OpenAI:
    return OpenAI(base_url=server.http + "/v1", api_key=KEYS["alice"], max_retries=0, timeout=60)


@pytest.mark.anyio
async def test_fifty_constrained_replies_at_once_all_validate(serve: Serve) -> None:
    validator = jsonschema_rs.validator_for(SCHEMA)
    # One key stands for fifty clients here: its limits are above what they send.
    limits = {"rate_limit": "1000/minute", "max_user_requests": 128}
    with serve(max_running=16, max_waiting=128, engine_process=True, **limits) as server:
        model = server.service.settings.model_name
        client = AsyncOpenAI(base_url=server.http + "/v1", api_key=KEYS["alice"], max_retries=0, timeout=300)
        async with client:

            def ask(n: int, constrained: bool) -> Any:
                extra: dict[str, Any] = {"response_format": FORMAT} if constrained else {}
                messages: Any = [{"role": "user", "content": f"question {n}"}]
                return client.chat.completions.create(
                    model=model, messages=messages, max_tokens=64, seed=n, **extra
                )

            replies = await asyncio.gather(*(ask(n, n % 6 != 5) for n in range(60)))
    constrained = [r for n, r in enumerate(replies) if n % 6 != 5]
    assert len(constrained) == 50
    for reply in constrained:
        assert reply.choices[0].finish_reason == "stop"
        validator.validate(json.loads(reply.choices[0].message.content or ""))
    free = [r.choices[0].message.content or "" for n, r in enumerate(replies) if n % 6 == 5]
    assert not all(text.startswith('{"answer"') for text in free), "the mask stays on its own rows"


def test_json_object_streams_one_object_and_bad_schemas_are_400(server: LiveServer) -> None:
    model = server.service.settings.model_name
    with sdk(server) as client:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "json please"}],
            response_format={"type": "json_object"},
            max_tokens=200,
            temperature=0,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.startswith("{")
        # Alternatives the grammar rules out report a floor, not -inf (which JSON cannot carry).
        scored = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "json please"}],
            response_format={"type": "json_schema", "json_schema": {"name": "v", "schema": SCHEMA}},
            logprobs=True,
            top_logprobs=5,
            max_tokens=64,
        )
        entries = scored.choices[0].logprobs.content or []  # type: ignore[union-attr]
        assert entries and all(-9999.0 <= t.logprob <= 0 for e in entries for t in e.top_logprobs)
        assert any(t.logprob == -9999.0 for e in entries for t in e.top_logprobs), "some were ruled out"
    bad = [
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
            "response_format",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}},
            "response_format",
        ),
        ({"type": "regex"}, "response_format.type"),
    ]
    for response_format, param in bad:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": response_format,
        }
        answer = httpx.post(server.http + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param


def test_chat_logprobs_are_the_models_own(server: LiveServer) -> None:
    model = server.service.settings.model_name
    messages: Any = [{"role": "user", "content": "hello there"}]
    with sdk(server) as client:
        reply = client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=8,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
            extra_body={"repetition_penalty": 1.0},  # vLLM's field: the row the sampler sees is the model's
        )
        streamed = client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=8,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
            stream=True,
            extra_body={"repetition_penalty": 1.0},
        )
        stream_entries = [
            e
            for c in streamed
            if c.choices and c.choices[0].logprobs
            for e in c.choices[0].logprobs.content or []
        ]
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 8 == reply.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0]), "greedy picks the likeliest"
        assert sum(math.exp(t) for t in tops) <= 1.0 + 1e-6
        assert entry.bytes == list(entry.token.encode())
    assert [e.logprob for e in stream_entries] == pytest.approx([e.logprob for e in content])
    assert all(len(e.top_logprobs) == 2 for e in stream_entries)
    # The first token's figure is the model's own log-softmax over the prompt.
    engine = server.engine
    prompt = engine.prompts.encode_chat(messages)
    with torch.no_grad():
        logits = engine._loaded.model(torch.tensor([prompt])).logits[0, -1].float()
    expected = logits.log_softmax(-1)
    first = engine.prompts.tokenizer.convert_tokens_to_ids(
        engine.prompts.tokenizer.tokenize(content[0].token)
    )
    assert content[0].logprob == pytest.approx(float(expected.max()), abs=1e-4)
    assert int(expected.argmax()) in first or len(first) != 1


def test_completions_plain_streamed_ids_and_logprobs(serve: Serve) -> None:
    with serve(engine_process=True) as server:  # the default layout: logprobs cross from the engine process
        _completions(server)


def _completions(server: LiveServer) -> None:
    model = server.service.settings.model_name
    tokenizer = server.engine.prompts.tokenizer
    prompt = "the quick brown fox"
    with sdk(server) as client:
        plain = client.completions.create(model=model, prompt=prompt, temperature=0, logprobs=3)
        assert plain.object == "text_completion" and plain.choices[0].text
        assert plain.usage is not None and plain.usage.completion_tokens == 16, "OpenAI's default max_tokens"
        assert plain.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
        logprobs = plain.choices[0].logprobs
        assert logprobs is not None and len(logprobs.tokens or []) == 16
        assert all(len(top) <= 3 for top in logprobs.top_logprobs or [])
        assert all(value <= 0 for value in logprobs.token_logprobs or [])
        assert (logprobs.text_offset or [])[0] == 0
        ids = tokenizer(prompt)["input_ids"]
        by_ids = client.completions.create(model=model, prompt=ids, temperature=0, max_tokens=16)
        assert by_ids.choices[0].text == plain.choices[0].text
        chunks = list(
            client.completions.create(
                model=model,
                prompt=prompt,
                temperature=0,
                stream=True,
                stop=["\u0000never"],
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


UNSUPPORTED = [
    ("/v1/chat/completions", "logit_bias", {"1": 5}),
    ("/v1/chat/completions", "frequency_penalty", 2.5),  # past OpenAI's range
    ("/v1/completions", "top_k", -2),
    ("/v1/chat/completions", "n", 2),
    ("/v1/chat/completions", "functions", [{"name": "f"}]),
    ("/v1/chat/completions", "top_logprobs", 2),  # without logprobs
    ("/v1/completions", "echo", True),
    ("/v1/completions", "suffix", "end"),
    ("/v1/completions", "best_of", 3),
    ("/v1/completions", "prompt", [[1, 2], [3]]),
]


def test_unsupported_fields_are_400_naming_them(server: LiveServer) -> None:
    # A field sent as null is one not sent, as typed clients write them.
    nulls = {"logit_bias": None, "functions": None, "stream": None, "service_tier": None, "max_tokens": 4}
    body = {"model": server.service.settings.model_name, "messages": [{"role": "user", "content": "hi"}]}
    assert (
        httpx.post(server.http + "/v1/chat/completions", json={**body, **nulls}, headers=AUTH).status_code
        == 200
    )
    for path, field, value in UNSUPPORTED:
        body: dict[str, Any] = {"model": server.service.settings.model_name, field: value}
        if path.endswith("chat/completions"):
            body["messages"] = [{"role": "user", "content": "hi"}]
        else:
            body.setdefault("prompt", "hi")
        answer = httpx.post(server.http + path, json=body, headers=AUTH, timeout=30)
        assert answer.status_code == 400, (field, answer.text)
        error = answer.json()["error"]
        # A rule between two fields names them in the message.
        assert error["param"] == field or (error["param"] is None and field in error["message"]), error
    # An image part (OpenAI's vision input) is a 400 naming it: the language model alone is served.
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "what is this?"}, image]
    body = {"model": server.service.settings.model_name, "messages": [{"role": "user", "content": content}]}
    answer = httpx.post(server.http + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 400 and "'image_url' content part is not supported" in answer.text, (
        answer.text
    )


def test_a_checkpoints_generation_config_sets_the_default_sampling(
    serve: Serve, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The same seeded request, nothing else set, on the same weights: a checkpoint whose
    generation_config.json recommends greedy decoding answers greedily; without it, the service's 0.7 samples.
    /v1/models says which defaults are in force and where each comes from."""
    card = tmp_path / "card"
    shutil.copytree(tiny_model_dir, card)
    config = json.loads((card / "generation_config.json").read_text())
    recommended = {"temperature": 0.0, "top_k": 20, "repetition_penalty": 1.0}
    (card / "generation_config.json").write_text(json.dumps(config | recommended))
    messages: Any = [{"role": "user", "content": "tell me a long story about a dragon"}]
    replies: dict[str, tuple[str, str]] = {}
    for name, model_dir in (("card", card), ("plain", tiny_model_dir)):
        with serve(model=str(model_dir)) as server, sdk(server) as client:
            model = server.service.settings.model_name

            def ask(client: OpenAI = client, model: str = model, **extra: Any) -> str:
                reply = client.chat.completions.create(
                    model=model, messages=messages, max_tokens=32, seed=5, **extra
                )
                return reply.choices[0].message.content or ""

            replies[name] = (ask(), ask(temperature=0.0, extra_body={"repetition_penalty": 1.0}))
            listed = httpx.get(server.http + "/v1/models", headers=AUTH).json()["data"][0]
            shown = listed["sampling_defaults"]
            if name == "card":
                # What the card leaves out (top_p) is unset, as transformers and vLLM read it.
                assert (shown["temperature"], shown["top_k"], shown["top_p"]) == (0.0, 20, 1.0)
                assert shown["source"] == dict.fromkeys(shown["source"], "checkpoint")
            else:
                assert shown["temperature"] == 0.7 and shown["source"]["temperature"] == "service"
    assert replies["card"][0] == replies["card"][1], "the card's greedy default"
    assert replies["plain"][0] != replies["plain"][1], "the service's sampled default"
    assert replies["card"][1] == replies["plain"][1], "the same weights"


@pytest.fixture(scope="module")
def stop_at_once_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its final norm zeroed: every logit is 0, so greedy picks id 0, `<|endoftext|>`, a
    stop token, first: every reply ends at once unless told otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwen_chat.engine.tiny import make_tiny_model

    directory = make_tiny_model(tmp_path_factory.mktemp("stop-at-once"))
    model = AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(directory).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("engine", ["batch", "simple"])
def test_benchmark_clients_fields_ignore_eos_min_tokens_and_usage_on_every_chunk(
    serve: Serve, stop_at_once_dir: Path, engine: str
) -> None:
    """What guidellm and `vllm bench serve` send: `ignore_eos` runs a reply to max_tokens through its stop
    tokens, `min_tokens` holds them off that long, `continuous_usage_stats` puts the usage on every chunk."""
    with serve(model=str(stop_at_once_dir), engine=engine) as server, sdk(server) as client:
        model = server.service.settings.model_name

        def ask(**extra: Any) -> Any:
            messages: Any = [{"role": "user", "content": "count to ten"}]
            return client.chat.completions.create(
                model=model, messages=messages, max_tokens=12, temperature=0, extra_body=extra
            )

        plain = ask()
        assert plain.choices[0].finish_reason == "stop" and plain.usage and plain.usage.completion_tokens <= 1
        ignoring = ask(ignore_eos=True)
        assert ignoring.choices[0].finish_reason == "length"
        assert ignoring.usage and ignoring.usage.completion_tokens == 12
        held = ask(min_tokens=5)
        assert held.choices[0].finish_reason == "stop" and held.usage and held.usage.completion_tokens >= 5
        too_many = httpx.post(
            server.http + "/v1/completions",
            json={"model": model, "prompt": "x", "max_tokens": 4, "min_tokens": 5},
            headers=AUTH,
        )
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "min_tokens"

        options = {"include_usage": True, "continuous_usage_stats": True}
        chunks = list(
            client.completions.create(
                model=model,
                prompt="one two",
                max_tokens=6,
                temperature=0,
                stream=True,
                stream_options=options,  # type: ignore[arg-type]
                extra_body={"ignore_eos": True},
            )
        )
        counts = [chunk.usage.completion_tokens for chunk in chunks if chunk.usage is not None]
        assert len(counts) == len(chunks) and counts == sorted(counts) and counts[-1] == 6
        assert {chunk.usage.prompt_tokens for chunk in chunks if chunk.usage} == {
            chunks[-1].usage.prompt_tokens
        }


def test_guidellms_default_bodies_and_health_probe_are_served(server: LiveServer) -> None:
    """guidellm's OpenAI backend (its request_handlers.py, as of 2026): a /health probe first, then streamed
    bodies with `stop: null`, `ignore_eos` and continuous usage; it reads `delta.content`/`text` and the last
    `usage` it saw. Each fixed-length request must get exactly its token count."""
    assert httpx.get(server.http + "/health").status_code == 200
    model = server.service.settings.model_name
    stream = {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    fixed = {"stop": None, "ignore_eos": True}
    text = {"type": "text", "text": "Tell me about the sea."}
    bodies = {
        "/v1/chat/completions": {
            "model": model,
            **stream,
            "max_completion_tokens": 24,
            **fixed,
            "messages": [{"role": "system", "content": "prefix"}, {"role": "user", "content": [text]}],
        },
        "/v1/completions": {"model": model, **stream, "max_tokens": 24, **fixed, "prompt": "prefix tell me"},
    }
    for path, body in bodies.items():
        usages, lines = [], []
        with httpx.stream("POST", server.http + path, json=body, headers=AUTH, timeout=60) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("data:") and line != "data: [DONE]":
                    data = json.loads(line[len("data:") :])
                    usages.append(data.get("usage"))
                lines += [line] if line else []
        assert lines[-1] == "data: [DONE]" and all(usage for usage in usages), path
        assert usages[-1]["completion_tokens"] == 24 and usages[-1]["prompt_tokens"] > 0, path
