"""The sampling parameters a request may set: names, types, ranges and defaults, declared once.

`SamplingOverrides` is what a request may send (the /ws `params` object as it is); the OpenAI and `/chat`
bodies spell the same fields with these types; `Settings` holds the server's defaults with them; `resolve`
turns a request's overrides into the engine's `SamplingParams`. A new parameter is added here, in the
engine's samplers and in the docs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

from pydantic import BaseModel, ConfigDict, Field

from qwen_chat.errors import ErrorCode, Refusal

MaxNewTokens = Annotated[int, Field(ge=1)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]  # 0 is greedy
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=2.0)]  # 1 is none
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]

# Positive values below these are zero in float32: sampling would divide by them and overflow. A smaller
# temperature is greedy (what it tends to); a smaller repetition penalty is this one.
MIN_TEMPERATURE = 1e-6
MIN_REPETITION_PENALTY = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    """What the engine samples with: every value set, within range."""

    max_new_tokens: int
    temperature: float  # 0 means greedy
    top_p: float
    repetition_penalty: float
    seed: int | None = None


# The server's defaults, unless QWEN_CHAT_MAX_NEW_TOKENS, _TEMPERATURE, _TOP_P or _REPETITION_PENALTY
# say otherwise.
DEFAULTS = SamplingParams(max_new_tokens=512, temperature=0.7, top_p=0.8, repetition_penalty=1.05)


class SamplingOverrides(BaseModel):
    """What one request may set; anything left out takes the server's default."""

    model_config = ConfigDict(extra="forbid", strict=True)
    max_new_tokens: MaxNewTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    seed: Seed | None = None


class SamplingDefaults(Protocol):
    """Where the server's defaults come from (`Settings`); `max_new_tokens` is also the cap."""

    @property
    def max_new_tokens(self) -> int: ...
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def repetition_penalty(self) -> float: ...


def resolve(
    defaults: SamplingDefaults, overrides: SamplingOverrides, max_tokens_field: str = "max_new_tokens"
) -> SamplingParams:
    """A request's parameters over the server's defaults; refuses a token budget past the server's cap,
    naming the field as the client spelled it."""
    if overrides.max_new_tokens is not None and overrides.max_new_tokens > defaults.max_new_tokens:
        message = f"{max_tokens_field}: must be at most {defaults.max_new_tokens}"
        raise Refusal(ErrorCode.BAD_REQUEST, message, param=max_tokens_field)
    temperature = defaults.temperature if overrides.temperature is None else overrides.temperature
    penalty = (
        defaults.repetition_penalty if overrides.repetition_penalty is None else overrides.repetition_penalty
    )
    return SamplingParams(
        max_new_tokens=overrides.max_new_tokens or defaults.max_new_tokens,
        temperature=temperature if temperature >= MIN_TEMPERATURE else 0.0,
        top_p=defaults.top_p if overrides.top_p is None else overrides.top_p,
        repetition_penalty=max(penalty, MIN_REPETITION_PENALTY),
        seed=overrides.seed,
    )
