"""The sampling parameters a request may set: names, types, ranges and defaults, declared once.

`SamplingOverrides` is what a request may send (the /ws `params` object as it is); the OpenAI and `/chat`
bodies spell the same fields with these types; `Settings` holds the operator's defaults with them;
`SamplingDefaults` merges the operator's, the checkpoint's (`generation_config.json`) and the service's own;
`resolve` turns a request's overrides into the engine's `SamplingParams`. A new parameter is added here, in
the engine's samplers (`engine/core/sampling.py`, `batch_sampler.py`) and in the docs.

The samplers apply them in one fixed order: the grammar's mask, the repetition penalty (prompt and generated
tokens), the presence and frequency penalties (generated tokens only), then temperature, top_k, top_p and
min_p (transformers' order of its warpers), then the draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from qwen_chat.errors import ErrorCode, Refusal

MaxNewTokens = Annotated[int, Field(ge=1)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]  # 0 is greedy
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=-1)]  # 0 or -1 (vLLM's spelling): every token
MinP = Annotated[float, Field(ge=0.0, le=1.0)]  # 0: off
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=2.0)]  # 1 is none
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]  # presence and frequency penalties: OpenAI's range
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
MinTokens = Annotated[int, Field(ge=0)]

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
    top_k: int = 0  # 0: every token
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # vLLM's, for benchmark clients: stop tokens end nothing (the reply runs to max_new_tokens); and no stop
    # token before `min_tokens` generated ones (a grammar's rows excepted: it decides where they end).
    ignore_eos: bool = False
    min_tokens: int = 0

    @property
    def penalises_occurrences(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


# The service's own defaults, where neither the operator (QWEN_CHAT_TEMPERATURE...) nor the checkpoint's
# generation_config.json sets one.
DEFAULTS = SamplingParams(max_new_tokens=512, temperature=0.7, top_p=0.8, repetition_penalty=1.05)
# What a value a checkpoint's generation_config.json leaves out means, when it sets others: nothing done (as
# transformers and vLLM read it), so its card's sampling is taken whole, not mixed with the service's.
NEUTRAL = SamplingParams(max_new_tokens=512, temperature=1.0, top_p=1.0, repetition_penalty=1.0)

# What may come from a checkpoint's generation_config.json (vLLM's list: max_new_tokens stays the operator's,
# since it is also the cap; do_sample is not read, a request's temperature says whether it samples).
CHECKPOINT_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
Source = Literal["operator", "checkpoint", "service"]


class SamplingFields(BaseModel):
    """The defaults' fields, None where unset: what a request sets (`SamplingOverrides`) and what the operator
    does (`Settings`)."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None


# Each default, in `SamplingFields`' order: what `SamplingDefaults.merge` and `resolve` go through.
DEFAULT_FIELDS = tuple(SamplingFields.model_fields)


class SamplingOverrides(SamplingFields):
    """What one request may set; anything left out takes the server's default."""

    model_config = ConfigDict(extra="forbid", strict=True)
    max_new_tokens: MaxNewTokens | None = None
    seed: Seed | None = None
    ignore_eos: bool | None = None
    min_tokens: MinTokens | None = None


_CHECKED = TypeAdapter(SamplingOverrides)


def checkpoint_values(config: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """The sampling values of a generation_config.json that the service can take, and those it cannot (out of
    its ranges), by name."""
    taken: dict[str, float] = {}
    refused: dict[str, Any] = {}
    for name in CHECKPOINT_FIELDS:
        if config.get(name) is None:
            continue
        value = config[name]
        try:
            checked = _CHECKED.validate_python({name: value}, strict=False)
        except ValidationError:
            refused[name] = value
            continue
        taken[name] = getattr(checked, name)
    return taken, refused


@dataclass(frozen=True)
class SamplingDefaults:
    """A request's defaults: each from the operator's setting, else the checkpoint's (where its
    generation_config.json sets any, those it leaves out are `NEUTRAL`), else the service's. `max_new_tokens`
    is also the cap on what a request may ask for."""

    max_new_tokens: int = DEFAULTS.max_new_tokens
    temperature: float = DEFAULTS.temperature
    top_p: float = DEFAULTS.top_p
    top_k: int = DEFAULTS.top_k
    min_p: float = DEFAULTS.min_p
    repetition_penalty: float = DEFAULTS.repetition_penalty
    presence_penalty: float = DEFAULTS.presence_penalty
    frequency_penalty: float = DEFAULTS.frequency_penalty
    source: Mapping[str, Source] = field(default_factory=dict)  # per field of DEFAULT_FIELDS

    @classmethod
    def merge(cls, operator: Any, checkpoint: Mapping[str, float] | None = None) -> SamplingDefaults:
        """`operator`: `Settings` (None where unset); `checkpoint`: `checkpoint_values`' first answer."""
        values: dict[str, Any] = {"max_new_tokens": operator.max_new_tokens}
        source: dict[str, Source] = {}
        for name in DEFAULT_FIELDS:
            chosen = getattr(operator, name)
            if chosen is not None:
                values[name], source[name] = chosen, "operator"
            elif checkpoint:
                values[name], source[name] = checkpoint.get(name, getattr(NEUTRAL, name)), "checkpoint"
            else:
                values[name], source[name] = getattr(DEFAULTS, name), "service"
        return cls(**values, source=source)

    def shown(self) -> dict[str, Any]:
        """For `/v1/models`: the values in force and where each comes from."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}
        return {**values, "source": dict(self.source)}


def resolve(
    defaults: SamplingDefaults, overrides: SamplingOverrides, max_tokens_field: str = "max_new_tokens"
) -> SamplingParams:
    """A request's parameters over the server's defaults; refuses a token budget past the server's cap,
    naming the field as the client spelled it."""
    if overrides.max_new_tokens is not None and overrides.max_new_tokens > defaults.max_new_tokens:
        message = f"{max_tokens_field}: must be at most {defaults.max_new_tokens}"
        raise Refusal(ErrorCode.BAD_REQUEST, message, param=max_tokens_field)
    chosen = {
        name: getattr(defaults, name) if getattr(overrides, name) is None else getattr(overrides, name)
        for name in DEFAULT_FIELDS
    }
    temperature, penalty = chosen.pop("temperature"), chosen.pop("repetition_penalty")
    max_new_tokens = overrides.max_new_tokens or defaults.max_new_tokens
    if (overrides.min_tokens or 0) > max_new_tokens:
        message = f"min_tokens: must be at most the reply's token limit ({max_new_tokens})"
        raise Refusal(ErrorCode.BAD_REQUEST, message, param="min_tokens")
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature if temperature >= MIN_TEMPERATURE else 0.0,
        repetition_penalty=max(penalty, MIN_REPETITION_PENALTY),
        seed=overrides.seed,
        ignore_eos=bool(overrides.ignore_eos),
        min_tokens=overrides.min_tokens or 0,
        **{**chosen, "top_k": max(int(chosen["top_k"]), 0)},
    )
