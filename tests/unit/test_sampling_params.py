"""The sampling parameters, declared once: the server's defaults, a request's overrides, one set of ranges."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.http.openai_schema import ChatCompletionRequest
from qwen_chat.http.seed_api import SimpleChatRequest
from qwen_chat.sampling_params import (
    DEFAULTS,
    MIN_REPETITION_PENALTY,
    SamplingOverrides,
    SamplingParams,
    resolve,
)
from qwen_chat.settings import Settings


def test_a_request_without_overrides_gets_the_servers_defaults() -> None:
    assert resolve(Settings(), SamplingOverrides()) == DEFAULTS
    configured = Settings(temperature=0.3, top_p=0.5, repetition_penalty=1.2, max_new_tokens=100)
    assert resolve(configured, SamplingOverrides()) == SamplingParams(100, 0.3, 0.5, 1.2)


def test_overrides_win_and_a_seed_passes_through() -> None:
    overrides = SamplingOverrides(
        max_new_tokens=7, temperature=1.5, top_p=0.9, repetition_penalty=1.0, seed=42
    )
    assert resolve(Settings(), overrides) == SamplingParams(7, 1.5, 0.9, 1.0, 42)
    # Zero is a value, not "unset": temperature 0 is greedy.
    assert resolve(Settings(), SamplingOverrides(temperature=0.0)).temperature == 0.0


def test_values_too_small_for_float32_become_greedy_or_the_smallest_penalty() -> None:
    tiny = SamplingOverrides(temperature=1e-320, repetition_penalty=1e-320)
    params = resolve(Settings(), tiny)
    assert params.temperature == 0.0 and params.repetition_penalty == MIN_REPETITION_PENALTY


def test_a_budget_past_the_servers_cap_is_refused_naming_the_clients_field() -> None:
    settings = Settings(max_new_tokens=64)
    assert resolve(settings, SamplingOverrides(max_new_tokens=64)).max_new_tokens == 64
    with pytest.raises(Refusal) as refused:
        resolve(settings, SamplingOverrides(max_new_tokens=65), "max_completion_tokens")
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert refused.value.param == "max_completion_tokens"
    assert refused.value.message == "max_completion_tokens: must be at most 64"


@pytest.mark.parametrize(
    ("name", "bad", "good"),
    [
        ("temperature", -0.01, 0.0),
        ("temperature", 2.01, 2.0),
        ("top_p", 0.0, 1e-9),
        ("top_p", 1.01, 1.0),
        ("repetition_penalty", 0.0, 1e-9),
        ("repetition_penalty", 2.01, 2.0),
        ("max_new_tokens", 0, 1),
    ],
)
def test_settings_and_every_api_share_one_range(name: str, bad: float, good: float) -> None:
    """At each bound, the same value is refused (and the one inside it taken) by the settings, the /ws
    params, the OpenAI body and the seed body."""
    openai_name = {"max_new_tokens": "max_tokens"}.get(name, name)
    checks = [lambda value: Settings(**{name: value}), lambda value: SamplingOverrides(**{name: value})]
    if name != "repetition_penalty":  # the OpenAI and seed APIs do not take one
        messages = [{"role": "user", "content": "x"}]
        checks.append(
            lambda value: ChatCompletionRequest(model="m", messages=messages, **{openai_name: value})
        )
        checks.append(lambda value: SimpleChatRequest(prompt="x", **{name: value}))
    for check in checks:
        check(good)
        with pytest.raises(ValidationError):
            check(bad)


def test_seeds_outside_63_bits_are_refused() -> None:
    assert SamplingOverrides(seed=2**63 - 1).seed == 2**63 - 1
    for seed in (-1, 2**63):
        with pytest.raises(ValidationError):
            SamplingOverrides(seed=seed)
