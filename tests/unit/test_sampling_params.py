"""The sampling parameters, declared once: the server's defaults, a request's overrides, one set of ranges."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from qwen_chat.engine.model.generation_config import sampling_defaults
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.http.openai_schema import ChatCompletionRequest
from qwen_chat.http.seed_api import SimpleChatRequest
from qwen_chat.sampling_params import (
    DEFAULTS,
    MIN_REPETITION_PENALTY,
    SamplingDefaults,
    SamplingOverrides,
    SamplingParams,
    checkpoint_values,
    resolve,
)
from qwen_chat.settings import Settings

SERVICE = SamplingDefaults.merge(Settings())


def test_a_request_without_overrides_gets_the_servers_defaults() -> None:
    assert resolve(SERVICE, SamplingOverrides()) == DEFAULTS
    configured = Settings(temperature=0.3, top_p=0.5, repetition_penalty=1.2, max_new_tokens=100, top_k=-1)
    assert resolve(SamplingDefaults.merge(configured), SamplingOverrides()) == SamplingParams(
        100, 0.3, 0.5, 1.2
    )


def test_the_operator_wins_over_the_checkpoint_which_wins_over_the_service() -> None:
    # Qwen3's card, as its generation_config.json writes it; do_sample and the ids are not sampling defaults.
    card = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": [1, 2]}
    taken, refused = checkpoint_values(card)
    assert taken == {"temperature": 0.6, "top_p": 0.95, "top_k": 20} and refused == {}
    defaults = SamplingDefaults.merge(Settings(top_p=0.5), taken)
    # The card is taken whole: the repetition penalty it does not set is none, not the service's 1.05.
    assert resolve(defaults, SamplingOverrides()) == SamplingParams(512, 0.6, 0.5, 1.0, top_k=20)
    assert defaults.source["temperature"] == "checkpoint" and defaults.source["top_p"] == "operator"
    assert defaults.source["repetition_penalty"] == "checkpoint"
    # A value the service cannot take is left out, named; the service's own applies.
    assert checkpoint_values({"temperature": 3.0, "top_k": 0}) == ({"top_k": 0}, {"temperature": 3.0})


def test_overrides_win_and_a_seed_passes_through() -> None:
    overrides = SamplingOverrides(
        max_new_tokens=7,
        temperature=1.5,
        top_p=0.9,
        repetition_penalty=1.0,
        seed=42,
        top_k=5,
        min_p=0.1,
        presence_penalty=-0.5,
        frequency_penalty=2.0,
    )
    expected = SamplingParams(7, 1.5, 0.9, 1.0, 42, 5, 0.1, -0.5, 2.0)
    assert resolve(SERVICE, overrides) == expected
    # Zero is a value, not "unset": temperature 0 is greedy; vLLM's top_k -1 is every token, as 0 is.
    assert resolve(SERVICE, SamplingOverrides(temperature=0.0)).temperature == 0.0
    checkpoint = SamplingDefaults.merge(Settings(), {"top_k": 20})
    assert resolve(checkpoint, SamplingOverrides(top_k=-1)).top_k == 0


def test_values_too_small_for_float32_become_greedy_or_the_smallest_penalty() -> None:
    tiny = SamplingOverrides(temperature=1e-320, repetition_penalty=1e-320)
    params = resolve(SERVICE, tiny)
    assert params.temperature == 0.0 and params.repetition_penalty == MIN_REPETITION_PENALTY


def test_a_budget_past_the_servers_cap_is_refused_naming_the_clients_field() -> None:
    settings = SamplingDefaults.merge(Settings(max_new_tokens=64))
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
        ("top_k", -2, -1),
        ("min_p", -0.01, 0.0),
        ("min_p", 1.01, 1.0),
        ("presence_penalty", -2.01, -2.0),
        ("frequency_penalty", 2.01, 2.0),
        ("max_new_tokens", 0, 1),
    ],
)
def test_settings_and_every_api_share_one_range(name: str, bad: float, good: float) -> None:
    """At each bound, the same value is refused (and the one inside it taken) by the settings, the /ws
    params, the OpenAI body and the seed body."""
    openai_name = {"max_new_tokens": "max_tokens"}.get(name, name)
    checks = [lambda value: Settings(**{name: value}), lambda value: SamplingOverrides(**{name: value})]
    messages = [{"role": "user", "content": "x"}]
    checks.append(lambda value: ChatCompletionRequest(model="m", messages=messages, **{openai_name: value}))
    if name in ("max_new_tokens", "temperature", "top_p"):  # the seed API's, as its tutorial had them
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


def test_generation_config_is_auto_service_or_a_folder_that_has_one(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text('{"top_k": 5, "temperature": 9.0}')
    defaults = sampling_defaults(Settings(generation_config=str(tmp_path)), "/the/checkpoint")
    assert defaults.top_k == 5 and defaults.source["top_k"] == "checkpoint"
    assert defaults.temperature == 1.0, "a value out of range is left out: unset, as the card says"
    assert sampling_defaults(Settings(generation_config="service")) == SERVICE
    with pytest.raises(ValidationError, match="neither `auto`, `service` nor a folder"):
        Settings(generation_config=str(tmp_path / "missing"))
