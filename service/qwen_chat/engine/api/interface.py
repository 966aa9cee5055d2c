"""The engine interface that every transport talks to, and the values that cross it.

An engine owns the model. Transports hand it a `GenerationRequest` and read `GenerationEvent`s from
`generate()`, an async iterator; leaving the iterator early (or calling `abort`) stops the generation
within one decode step. torch never runs on the event loop.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from qwen_chat.engine.model.prompts import Prompts
from qwen_chat.engine.wire import TokenLogprob
from qwen_chat.sampling_params import SamplingDefaults, SamplingParams

# The engine ends a reply `stop`, `length` or `cancelled`; `timeout` is a cancelled reply that its deadline
# cut, as the chat layer that set the deadline names it (`chat/stream.py`).
FinishReason = Literal["stop", "length", "cancelled", "timeout"]


class EngineState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


# Told when a started engine changes state by itself: LOADING with the reason while it restarts its core,
# READY again, or FAILED when it gives up.
StateListener = Callable[[EngineState, str], None]


class EngineError(Exception):
    """A generation could not run."""


class EngineOverloaded(EngineError):
    """The waiting queue is full: the caller should retry later."""

    def __init__(self, retry_after: float = 1.0) -> None:
        super().__init__("the server is at capacity, try again shortly")
        self.retry_after = retry_after


class UserAtCapacity(EngineError):
    """The request's user already has MAX_USER_REQUESTS generations running or waiting."""

    def __init__(self, cap: int, retry_after: float = 1.0) -> None:
        super().__init__(
            f"this key already has {cap} replies running or waiting, the most one key may have at once; "
            "send the next when one ends"
        )
        self.retry_after = retry_after


class EngineNotReady(EngineError):
    def __init__(self) -> None:
        super().__init__("the model is not loaded yet, try again shortly")
        self.retry_after = 5.0


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    # None: the model's own end-of-turn tokens.
    stop_token_ids: frozenset[int] | None = None
    # OpenAI's response_format as canonical JSON (engine/core/grammar.py): every token is masked to it.
    constraint: str | None = None
    # None: no log-probabilities; k: each token's, with the k likeliest alternatives.
    top_logprobs: int | None = None
    # Whose request it is: capped at MAX_USER_REQUESTS, queued fairly among users; None (authentication
    # disabled, so one anonymous user): neither.
    user: str | None = None


@dataclass(frozen=True)
class Queued:
    """The request was accepted; `position` 0 means it is decoding now, n means n-th in line."""

    position: int


@dataclass(frozen=True)
class TextDelta:
    text: str
    completion_tokens: int  # generated so far
    # The tokens behind this text (and any whose text is still held back), when the request asked.
    logprobs: tuple[tuple[int, TokenLogprob], ...] = ()


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float  # accepted until decoding started
    generation_seconds: float  # decoding started until finished
    cached_tokens: int = 0  # of the prompt tokens, those found in the prefix cache instead of prefilled


GenerationEvent = Queued | TextDelta | Finished


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    load_seconds: float | None = None


class Engine(Protocol):
    """What transports may use. `ThreadEngine` and `ProcessEngine` implement it, with either core."""

    @property
    def state(self) -> EngineState: ...

    @property
    def stats(self) -> EngineStats: ...

    @property
    def prompts(self) -> Prompts: ...

    @property
    def sampling_defaults(self) -> SamplingDefaults: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]: ...

    def check_user_cap(self, user: str | None) -> None:
        """Raise `UserAtCapacity` if `user` already has its most replies running or waiting."""

    def abort(self, request_id: str) -> None: ...

    def watch(self, listener: StateListener) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
