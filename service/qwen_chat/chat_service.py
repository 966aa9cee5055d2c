"""What every transport does with a chat request: admit it (drain, rate limit, prompt budget, queue),
then stream its reply with stop strings applied and metrics recorded. Transports only translate."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from qwen_chat.engine import (
    EngineError,
    EngineNotReady,
    EngineOverloaded,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Queued,
    SamplingParams,
    TextDelta,
)
from qwen_chat.metrics import RequestMetrics
from qwen_chat.prompts import Message, PromptTooLong, has_lone_surrogate
from qwen_chat.settings import Settings

DRAIN_RETRY_AFTER = 5.0
# Positive values below these are zero in float32: sampling would divide by them and overflow. A smaller
# temperature is greedy (what it tends to); a smaller repetition penalty is this one.
MIN_TEMPERATURE = 1e-6
MIN_REPETITION_PENALTY = 1e-6


class ChatRefused(Exception):
    """The request was not admitted. `code` is the /ws error code; `status` the HTTP status."""

    def __init__(
        self, code: str, message: str, status: int, retry_after: float | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.param = param
        self.counted = False

    def record(self, usage: RequestMetrics) -> None:
        """Count this refusal in requests_total, once, whichever layer sees it first."""
        if not self.counted:
            usage.ended("rate_limited" if self.code == "rate_limited" else "rejected")
            self.counted = True


def sampling_params(
    settings: Settings,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    max_tokens_field: str = "max_new_tokens",
) -> SamplingParams:
    """Request parameters over the configured defaults; refuses a token budget past the server's cap."""
    if max_new_tokens is not None and max_new_tokens > settings.max_new_tokens:
        message = f"{max_tokens_field}: must be at most {settings.max_new_tokens}"
        raise ChatRefused("bad_request", message, 422, param=max_tokens_field)
    temperature = settings.temperature if temperature is None else temperature
    penalty = settings.repetition_penalty if repetition_penalty is None else repetition_penalty
    return SamplingParams(
        max_new_tokens=max_new_tokens or settings.max_new_tokens,
        temperature=temperature if temperature >= MIN_TEMPERATURE else 0.0,
        top_p=settings.top_p if top_p is None else top_p,
        repetition_penalty=max(penalty, MIN_REPETITION_PENALTY),
        seed=seed,
    )


class StopStrings:
    """Cuts the reply before the first stop string, holding back text that may be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self._stops:
            return text
        buffered = self._held + text
        cut = min((buffered.find(s) for s in self._stops if s in buffered), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buffered[:cut]
        keep = max((n for s in self._stops for n in range(1, len(s)) if buffered.endswith(s[:n])), default=0)
        self._held = buffered[len(buffered) - keep :] if keep else ""
        return buffered[: len(buffered) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


@dataclass(eq=False)
class ChatStream:
    """An admitted request: its place in the queue, and its reply as text deltas and one `Finished`."""

    engine: Any
    request: GenerationRequest
    messages: list[Message]  # what was kept of the conversation after dropping old turns
    queue_position: int
    usage: RequestMetrics
    stops: StopStrings
    _events: AsyncIterator[GenerationEvent]
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    on_close: Callable[[ChatStream], None] | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    async def events(self) -> AsyncIterator[TextDelta | Finished]:
        """Text deltas, then `Finished`; metrics are recorded as each is handed on (that is, sent)."""
        completion = 0
        try:
            async for event in self._events:
                if isinstance(event, TextDelta) and not self.stops.stopped:
                    completion = event.completion_tokens
                    text = self.stops.feed(event.text)
                    if self.stops.stopped:
                        self.engine.abort(self.request.request_id)
                    if text:
                        yield TextDelta(text, completion)
                        self.usage.tokens_sent(completion)
                elif isinstance(event, Finished):
                    tail = self.stops.flush() if not self.stops.stopped else ""
                    if tail:
                        yield TextDelta(tail, event.completion_tokens)
                        self.usage.tokens_sent(event.completion_tokens)
                    if self.stops.stopped:
                        event = dataclasses.replace(event, reason="stop")
                    yield event
                    self.usage.finished(
                        event.reason,
                        event.prompt_tokens,
                        event.completion_tokens,
                        event.queue_seconds,
                        tokens_per_second(event),
                    )
                    return
        except EngineError:
            self.usage.ended("error")
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self.usage.ended("cancelled")
            raise
        finally:
            await self.aclose()

    def cancel(self) -> None:
        """End the reply early: it finishes with reason `cancelled`."""
        self.engine.abort(self.request.request_id)

    async def aclose(self) -> None:
        """Stop the generation if it still runs; transports call this when they are done, however they end."""
        await self._events.aclose()  # type: ignore[attr-defined]
        if not self.closed.is_set():
            self.closed.set()
            if self.on_close is not None:
                self.on_close(self)


def tokens_per_second(event: Finished) -> float:
    return event.completion_tokens / event.generation_seconds if event.generation_seconds else 0.0


async def start_chat(
    state: Any,
    user: str,
    transport: str,
    messages: list[Message],
    params: SamplingParams,
    stop: list[str] | None = None,
    usage: RequestMetrics | None = None,
) -> ChatStream:
    """Admit one chat request or raise ChatRefused (draining, rate limit, too long, not ready, queue full)."""
    settings: Settings = state.settings
    usage = usage or RequestMetrics(settings.model_name, transport)
    try:
        if has_lone_surrogate(messages):
            message = "a message holds a lone surrogate (\\ud800-\\udfff): it is not text"
            raise ChatRefused("bad_request", message, 422, param="messages")
        if state.drain.draining:
            raise ChatRefused("overloaded", "the server is shutting down", 503, DRAIN_RETRY_AFTER)
        retry_after = await state.rate_limiter.hit(user)
        if retry_after is not None:
            raise ChatRefused("rate_limited", f"rate limit {settings.rate_limit} reached", 429, retry_after)
        engine = state.engine
        try:
            # Tokenising a long conversation takes milliseconds: keep it off the event loop.
            kept, prompt_ids = await asyncio.to_thread(engine.prompts.fit, messages)
        except PromptTooLong as exc:
            raise ChatRefused("too_long", str(exc), 422, param="messages") from None
        request = GenerationRequest(uuid.uuid4().hex, prompt_ids, params)
        events = engine.generate(request)
        first = await anext(events)
    except (EngineNotReady, EngineOverloaded) as exc:
        refusal = ChatRefused("overloaded", str(exc), 503, exc.retry_after)
        refusal.record(usage)
        raise refusal from None
    except ChatRefused as exc:
        exc.record(usage)
        raise
    assert isinstance(first, Queued)
    stream = ChatStream(engine, request, kept, first.position, usage, StopStrings(stop or []), events)
    state.drain.track(stream)
    return stream
