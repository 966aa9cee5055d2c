"""What the batch sampler reads of the requests transformers' manager hands it (`FutureRequestState.state`,
its `RequestState`), for driving the sampler on logits alone."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class State:
    request_id: str
    initial_tokens: list[int]
    generated_tokens: list[int] = field(default_factory=list)


@dataclass
class Future:
    state: State
