"""What one chat request records as it is answered: its metrics, and (while traces are on) its spans."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from qwen_chat.metrics.series import (
    GENERATION_TOKENS,
    INTER_TOKEN_LATENCY,
    PROMPT_TOKENS,
    REFUSALS,
    REQUEST_DURATION,
    REQUEST_QUEUE,
    REQUESTS,
    TIME_TO_FIRST_TOKEN,
    TOKENS_PER_SECOND,
    Transport,
)

if TYPE_CHECKING:
    from qwen_chat.errors import Refusal


class ReplySpans(Protocol):
    """What a request's trace is told as its metrics are recorded (`tracing.ReplyTrace`, a room above)."""

    def first_token(self) -> None: ...
    def finished(
        self, outcome: str, prompt_tokens: int, completion_tokens: int, queue_seconds: float
    ) -> None: ...
    def ended(self, outcome: str, error_type: str = ...) -> None: ...
    def refused(self, refusal: Refusal) -> None: ...


@dataclass
class RequestMetrics:
    """What one chat request contributes, recorded as its messages are sent to the client."""

    model: str
    transport: Transport
    received: float = field(default_factory=time.perf_counter)
    tokens_counted: int = 0
    last_token_at: float | None = None
    first_token_at: float | None = None
    trace: ReplySpans | None = None  # its spans, while traces are on (`tracing.ReplyTrace`)
    done: bool = False  # how it ended is counted (once: finished, ended or refused)

    def tokens_sent(self, completion_tokens: int) -> None:
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
            TIME_TO_FIRST_TOKEN.labels(self.model).observe(now - self.received)
            if self.trace is not None:
                self.trace.first_token()
        elif self.last_token_at is not None:
            INTER_TOKEN_LATENCY.labels(self.model).observe(now - self.last_token_at)
        self.last_token_at = now
        self._count(completion_tokens)

    def finished(
        self,
        outcome: str,
        prompt_tokens: int,
        completion_tokens: int,
        queue_seconds: float,
        tokens_per_second: float,
    ) -> None:
        if self.done:
            return
        self.done = True
        self._count(completion_tokens)
        PROMPT_TOKENS.labels(self.model).inc(prompt_tokens)
        REQUEST_QUEUE.labels(self.model).observe(queue_seconds)
        if completion_tokens:
            TOKENS_PER_SECOND.labels(self.model).observe(tokens_per_second)
        REQUEST_DURATION.labels(self.model).observe(time.perf_counter() - self.received)
        REQUESTS.labels(self.model, self.transport, outcome).inc()
        if self.trace is not None:
            self.trace.finished(outcome, prompt_tokens, completion_tokens, queue_seconds)

    def ended(self, outcome: str, error_type: str = "engine_error") -> None:
        """A request that ends without a `Finished` event: it failed (`error_type` says how, on its span),
        or its client vanished."""
        if self.done:
            return
        self.done = True
        REQUESTS.labels(self.model, self.transport, outcome).inc()
        if self.trace is not None:
            self.trace.ended(outcome, error_type)

    def refused(self, refusal: Refusal) -> None:
        """The request was answered with `refusal`: counted once, by the transport that answers it."""
        if self.done:
            return
        self.done = True
        if refusal.code.outcome is not None:
            REQUESTS.labels(self.model, self.transport, refusal.code.outcome).inc()
            REFUSALS.labels(self.model, self.transport, refusal.cause).inc()
        if self.trace is not None:
            self.trace.refused(refusal)

    @property
    def ttft_seconds(self) -> float:
        return (self.first_token_at or time.perf_counter()) - self.received

    def _count(self, completion_tokens: int) -> None:
        if completion_tokens > self.tokens_counted:
            GENERATION_TOKENS.labels(self.model).inc(completion_tokens - self.tokens_counted)
            self.tokens_counted = completion_tokens
